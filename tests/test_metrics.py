"""Metric functions against hand-computed values."""
from __future__ import annotations

import math

import pytest

from vlm_inference import metrics as M


@pytest.mark.parametrize("answer, reference", [
    ("Two", "2"),
    ("the dog.", "dog"),
    ("A dog", "dog"),
    ("Yes.", "yes"),
    ("dont", "don’t"),            # contractions table: "dont" -> "don’t"
    ("isnt", "isn’t"),
    ("ten", "10"),
    ("none", "0"),
    ("left, of the can", "left of can"),
    ("There is 1 object in this image.", "there is one object in this image"),
    ("1,000", "1000"),            # a comma between digits strips all punctuation
])
def test_vqa_normalisation_matches(answer, reference):
    assert M.answers_match(answer, reference)


@pytest.mark.parametrize("answer, reference", [
    ("3", "2"), ("dog", "dogs"), ("no", "yes"), ("left", "right"), ("eleven", "11"),
])
def test_vqa_normalisation_keeps_different_answers_apart(answer, reference):
    assert not M.answers_match(answer, reference)


def test_official_normalisation_steps():
    assert M.process_punctuation("yes, it is.") == "yes it is"
    assert M.process_punctuation("red/blue") == "red blue"       # no space next to "/": becomes a space
    assert M.process_punctuation("3.5 m") == "3.5 m"              # a decimal point stays
    assert M.process_digit_article("The Two Cats") == "2 cats"
    assert M.normalize_answer(" An\tapple\n") == "apple"
    assert M.normalize_answer("whats up") == "what’s up"


@pytest.mark.parametrize("text, number", [
    ("There are 3 bottles in this image.", 3.0),
    ("Two.", 2.0),
    ("There are no cans in this image.", 0.0),
    ("I count 12, maybe 13", 12.0),
    ("many", None),
])
def test_first_number(text, number):
    assert M.first_number(text) == number


def test_grounding_iou_around_the_threshold():
    ref = "[0.00, 0.00, 1.00, 1.00]"
    assert M.grounding_iou("[0.00, 0.00, 0.49, 1.00]", ref) == pytest.approx(0.49)
    assert M.grounding_iou("It is at [0.00, 0.00, 0.51, 1.00].", ref) == pytest.approx(0.51)
    assert M.grounding_iou("somewhere on the left", ref) == 0.0
    assert M.grounding_iou("[0.1, 0.1, 0.2, 0.2]", "no box") is None
    preds = [{"answer": "[0.00, 0.00, 0.49, 1.00]", "reference": ref},
             {"answer": "[0.00, 0.00, 0.51, 1.00]", "reference": ref},
             {"answer": "on the left", "reference": ref}]
    g = M.score_grounding(preds)
    assert g == {"n": 3, "acc@0.5": pytest.approx(1 / 3), "mean_iou": pytest.approx(1.0 / 3), "no_box": 1}


def test_bleu_hand_computed():
    hyp = "the cat sat on the mat".split()
    ref = "the cat sat on a mat".split()
    # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, no brevity penalty.
    b = M.bleu([hyp], [[ref]])
    assert b[0] == pytest.approx(5 / 6)
    assert b[1] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert b[3] == pytest.approx(12 ** -0.25)                      # (1/12) ** (1/4) = 0.53728
    # Short hypothesis: brevity penalty exp(1 - 6/2) = e^-2.
    b = M.bleu([["the", "cat"]], [["the cat sat on the mat".split()]])
    assert b[1] == pytest.approx(math.exp(-2))
    # Corpus level: counts are summed before the precisions are taken.
    b = M.bleu([["a", "b"], ["c", "d"]], [[["a", "b"]], [["c", "x"]]])
    assert b[0] == pytest.approx(3 / 4)


def test_rouge_l_hand_computed():
    hyp = "a cat on the mat".split()
    ref = "the cat sat on the mat".split()
    # LCS "cat on the mat" = 4: P = 4/5, R = 4/6, F = 2.44 P R / (R + 1.44 P).
    assert M.lcs_length(hyp, ref) == 4
    assert M.rouge_l(hyp, [ref]) == pytest.approx(0.7155425219941348)
    assert M.rouge_l(ref, [ref]) == pytest.approx(1.0)
    assert M.rouge_l([], [ref]) == 0.0


def test_cider_d_hand_computed():
    # Two items; df: "a" 2, "cat" 1, "bird" 1, "a cat" 1, "a bird" 1; log N = log 2.
    # Item 1 equals its reference: unigram and bigram cosines are 1, 3- and 4-grams 0 ->
    # mean 0.5, times 10 = 5. Item 2 shares only "a", whose idf is 0 -> 0.
    hyps = [["a", "cat"], ["a", "dog"]]
    refs = [[["a", "cat"]], [["a", "bird"]]]
    assert M.cider_d(hyps, refs) == pytest.approx([5.0, 0.0])
    # Length penalty: one more bigram than the reference multiplies by exp(-1 / 72).
    hyps = [["a", "cat", "cat"], ["a", "dog"]]
    scores = M.cider_d(hyps, refs)
    # unigrams: hyp (a:0, cat:2 log2), ref (a:0, cat:log2): sum min(h,r)*r = log2^2, norms 2log2 * log2 -> 1/2.
    # bigrams: hyp ("a cat": log2, "cat cat": log2), ref ("a cat": log2): log2^2 / (sqrt2 log2 * log2).
    expected = (0.5 + 1 / math.sqrt(2)) / 4 * 10 * math.exp(-1 / 72)
    assert scores[0] == pytest.approx(expected)
    assert M.cider_d([["a"]], [[["a"]]]) == [0.0]                 # one item: idf log(1) = 0
    assert M.score_descriptions([{"answer": "a", "reference": "a"}])["cider"] is None


def test_caption_tokens():
    assert M.caption_tokens("A green, glass Bottle.") == ["a", "green", "glass", "bottle"]
    assert M.caption_tokens("It's [0.10, 0.20]!") == ["it's", "0", "10", "0", "20"]


def test_score_predictions_by_type():
    preds = [
        {"type": "count", "answer": "There are two objects in this image.",
         "reference": "There are 2 objects in this image."},
        {"type": "count", "answer": "There are 4 objects.", "reference": "There are 3 objects in this image."},
        {"type": "exists", "answer": "Yes.", "reference": "yes"},
        {"type": "grounding", "answer": "[0.00, 0.00, 0.51, 1.00]", "reference": "[0.00, 0.00, 1.00, 1.00]"},
        {"type": "region_description", "answer": "a cat", "reference": "a cat"},
        {"type": "region_description", "answer": "a dog", "reference": "a bird"},
        {"type": None, "answer": "blue", "reference": "Blue."},
    ]
    r = M.score_predictions(preds)
    count = r["per_type"]["count"]
    assert count == {"n": 2, "accuracy": 0.5, "count_exact": 0.5, "count_mae": 0.5, "count_no_number": 0}
    assert r["per_type"]["exists"] == {"n": 1, "accuracy": 1.0}
    assert r["per_type"]["untyped"] == {"n": 1, "accuracy": 1.0}
    assert r["per_type"]["grounding"]["acc@0.5"] == 1.0
    assert r["per_type"]["region_description"]["cider"] == pytest.approx(2.5)
    overall = r["overall"]
    assert overall["n"] == 7 and overall["n_short_answer"] == 4 and overall["accuracy"] == 0.75
    assert overall["n_grounding"] == 1 and overall["cider"] == pytest.approx(2.5)


def test_difference_skips_counts():
    a = {"overall": {"n": 4, "accuracy": 0.75}, "per_type": {"count": {"n": 2, "accuracy": 0.5, "count_no_number": 1}}}
    b = {"overall": {"n": 4, "accuracy": 0.25}, "per_type": {"count": {"n": 2, "accuracy": 1.0, "count_no_number": 0}}}
    assert M.difference(a, b) == {"overall": {"accuracy": 0.5}, "per_type": {"count": {"accuracy": -0.5}}}
