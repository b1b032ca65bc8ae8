"""Metric functions against hand-computed values, scored through the real scorer (score_predictions)."""
from __future__ import annotations

import math

import pytest

from vlm_inference import metrics as M


def _scores(qtype: str, pairs) -> dict:
    """The per-type scores score_predictions gives ``(answer, reference)`` pairs of one type."""
    preds = [{"type": qtype, "answer": answer, "reference": reference} for answer, reference in pairs]
    return M.score_predictions(preds)["per_type"][qtype]


@pytest.mark.parametrize("answer, reference", [
    ("Two", "2"),
    ("the dog.", "dog"),
    ("A dog", "dog"),
    ("Yes.", "yes"),
    ("dont", "don't"),            # contractions table: "dont" -> "don't"
    ("isnt", "isn't"),
    ("ten", "10"),
    ("none", "0"),
    ("left, of the can", "left of can"),
    ("There is 1 object in this image.", "there is one object in this image"),
    ("1,000", "1000"),            # a comma between digits strips all punctuation
])
def test_vqa_normalisation_matches(answer, reference):
    assert _scores("exists", [(answer, reference)])["accuracy"] == 1.0


@pytest.mark.parametrize("answer, reference", [
    ("3", "2"), ("dog", "dogs"), ("no", "yes"), ("left", "right"), ("eleven", "11"),
])
def test_vqa_normalisation_keeps_different_answers_apart(answer, reference):
    assert _scores("exists", [(answer, reference)])["accuracy"] == 0.0


def test_official_normalisation_steps():
    assert M.process_punctuation("yes, it is.") == "yes it is"
    assert M.process_punctuation("red/blue") == "red blue"       # no space next to "/": becomes a space
    assert M.process_punctuation("3.5 m") == "3.5 m"              # a decimal point stays
    assert M.process_digit_article("The Two Cats") == "2 cats"
    assert M.normalize_answer(" An\tapple\n") == "apple"
    assert M.normalize_answer("whats up") == "what's up"


@pytest.mark.parametrize("text, expected", [
    ("Yes!", "yes"),               # "!" is in the current punctuation list
    ("hot-dog", "hot dog"),        # so is "-": no space next to it -> a space
    ("dont", "don't"),             # straight apostrophe, as in the current contractions table
    ("It's a dog", "it's dog"),    # "'" is no longer punctuation
    ("{red}", "red"),
    ("time: 3:30", "time: 3:30"),  # ":" is no longer punctuation either
    ("couldn'tve", "couldn't've"),
])
def test_current_official_normalisation(text, expected):
    assert M.normalize_answer(text) == expected


# Strings chosen to hit every rule and quirk of the official functions: each punctuation mark
# with and without a space beside it, the digit-comma rule (which removes ALL punctuation of the
# string), decimal points, the 32-period limit, number words, articles, contractions with and
# without apostrophes, curly quotes, upper case, unicode and empty text.
TRICKY = [
    "Yes!", "hot-dog", "dont", "It's a dog", "yes.", "Yes, it is.", "no", "2", "Two", "TEN", "none", "zero",
    "1,000", "1,000 dogs!", "3.5", "3.5 m.", "e.g. a cat", "Mr. Smith's hat", "a.b.c", ". . .", "." * 40,
    "the end.", "An apple", "a the an", "red/blue", "red / blue", "(left)", "( left )", "[0.10, 0.20, 0.30, 0.40]",
    "x=y+z", "back\\slash", "snake_case", "a>b<c", "@home", "`tick`", "what?", "what ?", "{curly}", "{ curly }",
    'say "hi"', "don’t", "isnt", "Im", "Id've", "ow's'at", "'ows'at", "somebody'd", "yall'll", "whats",
    "left-hand side", "state-of-the-art", "-5", "5-", "  spaced   out  ", "tab\there", "new\nline", "",
    "café crème", "naïve", "UPPER Case WORDS", "one two three", "no, none", "It is 10 o'clock", "oclock",
    "can't", "cant", "100%", "#1", "$5", "a & b", "3,5", "1,2,3 go!", "end!", "!!!", "?!", "--",
]


def test_normalisation_equals_the_official_script():
    """Side by side with the vendored official code (tests/vqa_eval_reference.py, commit a013f00)."""
    from tests.vqa_eval_reference import VQAEval
    ref = VQAEval()
    assert len(TRICKY) >= 50
    for text in TRICKY:
        official = text.replace("\n", " ").replace("\t", " ").strip()
        official = ref.processDigitArticle(ref.processPunctuation(official))
        assert M.normalize_answer(text) == official, text
        assert M.process_punctuation(text) == ref.processPunctuation(text), text
        assert M.process_digit_article(text) == ref.processDigitArticle(text), text
    # the tables themselves
    assert M.CONTRACTIONS == ref.contractions and list(M.PUNCT) == ref.punct
    assert list(M.ARTICLES) == ref.articles and M.MANUAL_MAP.items() <= ref.manualMap.items()


@pytest.mark.parametrize("text, number", [
    ("There are 3 bottles in this image.", 3.0),
    ("Two.", 2.0),
    ("There are no cans in this image.", 0.0),
    ("I count 12, maybe 13", 12.0),
    ("many", None),
])
def test_first_number(text, number):
    """The number a count answer gives, seen through count_mae against a reference of 20."""
    counted = _scores("count", [(text, "There are 20 objects in this image.")])
    if number is None:
        assert counted["count_no_number"] == 1 and counted["count_mae"] is None
    else:
        assert counted["count_no_number"] == 0 and counted["count_mae"] == abs(number - 20)


def _iou(answer: str, reference: str) -> float | None:
    """IoU of one grounding answer with its reference, as the scorer computes it (None: not scored)."""
    return _scores("grounding", [(answer, reference)])["mean_iou"]


def test_grounding_iou_around_the_threshold():
    ref = "[0.00, 0.00, 1.00, 1.00]"
    assert _iou("[0.00, 0.00, 0.49, 1.00]", ref) == pytest.approx(0.49)
    assert _iou("It is at [0.00, 0.00, 0.51, 1.00].", ref) == pytest.approx(0.51)
    assert _iou("somewhere on the left", ref) == 0.0
    assert _iou("[0.1, 0.1, 0.2, 0.2]", "no box") is None
    assert _scores("grounding", [("[0.1, 0.1, 0.2, 0.2]", "no box")])["n"] == 0
    g = _scores("grounding", [("[0.00, 0.00, 0.49, 1.00]", ref), ("[0.00, 0.00, 0.51, 1.00]", ref),
                              ("on the left", ref)])
    assert g == {"n": 3, "acc@0.5": pytest.approx(1 / 3), "mean_iou": pytest.approx(1.0 / 3), "no_box": 1}


def test_bleu_hand_computed():
    # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, no brevity penalty.
    b = _scores("region_description", [("the cat sat on the mat", "the cat sat on a mat")])
    assert b["bleu1"] == pytest.approx(5 / 6)
    assert b["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert b["bleu4"] == pytest.approx(12 ** -0.25)                 # (1/12) ** (1/4) = 0.53728
    # Short hypothesis: brevity penalty exp(1 - 6/2) = e^-2.
    b = _scores("region_description", [("the cat", "the cat sat on the mat")])
    assert b["bleu2"] == pytest.approx(math.exp(-2))
    # Corpus level: counts are summed before the precisions are taken.
    b = _scores("region_description", [("a b", "a b"), ("c d", "c x")])
    assert b["bleu1"] == pytest.approx(3 / 4)


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
    # mean 0.5, times 10 = 5. Item 2 shares only "a", whose idf is 0 -> 0. The score is the mean.
    assert _scores("region_description", [("a cat", "a cat"), ("a dog", "a bird")])["cider"] == pytest.approx(2.5)
    # Length penalty: one more bigram than the reference multiplies item 1 by exp(-1 / 72).
    # unigrams: hyp (a:0, cat:2 log2), ref (a:0, cat:log2): sum min(h,r)*r = log2^2, norms 2log2 * log2 -> 1/2.
    # bigrams: hyp ("a cat": log2, "cat cat": log2), ref ("a cat": log2): log2^2 / (sqrt2 log2 * log2).
    expected = (0.5 + 1 / math.sqrt(2)) / 4 * 10 * math.exp(-1 / 72)
    cider = _scores("region_description", [("a cat cat", "a cat"), ("a dog", "a bird")])["cider"]
    assert cider == pytest.approx((expected + 0.0) / 2)
    # One item: every idf is log(1) = 0, so the score says nothing and is reported as missing.
    assert _scores("region_description", [("a", "a")])["cider"] is None


# Captions and the tokens coco-caption scores for them: the output of pycocoevalcap 1.2's tokenizer
# (Stanford CoreNLP 3.4.1 PTBTokenizer -preserveLines -lowerCase, run with openjdk 17) after its
# PUNCTUATIONS filter, pasted here. Note "-lrb-" etc. stay: the filter lists them in upper case.
PTB_REFERENCE = [
    ('a red car parked on the street', 'a red car parked on the street'),
    ("The cat's toy (red) is on the mat.", "the cat 's toy -lrb- red -rrb- is on the mat"),
    ("He doesn't like it, does he?", "he does n't like it does he"),
    ('A hot-dog stand near the road.', 'a hot-dog stand near the road'),
    ('"Quoted" words and \'single\' ones...', 'quoted words and single ones'),
    ("It's a dog's life -- isn't it?", "it 's a dog 's life is n't it"),
    ('Two men; one woman: 3.5 m tall! {curly} [square]',
     'two men one woman 3.5 m tall -lcb- curly -rcb- -lsb- square -rsb-'),
    ("can't won't I'm we'll they've you'd cannot gonna",
     "ca n't wo n't i 'm we 'll they 've you 'd can not gon na"),
    ('$5 100% #1 a & b x/y 1,000 3:30', '$ 5 100 % # 1 a & b x/y 1,000 3:30'),
    ("The dogs' bowls. cats'", 'the dogs bowls cats'),
    ('a man in a black shirt and blue jeans', 'a man in a black shirt and blue jeans'),
    ('A close-up of a pizza with pepperoni.', 'a close-up of a pizza with pepperoni'),
    ("a woman's hand holding a cell phone", "a woman 's hand holding a cell phone"),
    ("there's a clock on the tower", "there 's a clock on the tower"),
    ('A large, white building with many windows.', 'a large white building with many windows'),
    ('people are walking down the sidewalk', 'people are walking down the sidewalk'),
    ('A bus that is parked in front of a building', 'a bus that is parked in front of a building'),
    ('two giraffes standing next to each other', 'two giraffes standing next to each other'),
    ('a plate of food with broccoli and rice', 'a plate of food with broccoli and rice'),
    ("the children's playground is empty", "the children 's playground is empty"),
    ('A black-and-white photo of a train.', 'a black-and-white photo of a train'),
    ('a bowl of soup (tomato) and bread', 'a bowl of soup -lrb- tomato -rrb- and bread'),
    ('the sign says "stop"', 'the sign says stop'),
    ('a teddy bear sitting on a chair', 'a teddy bear sitting on a chair'),
    ('an old-fashioned clock', 'an old-fashioned clock'),
    ('a baseball player swinging a bat', 'a baseball player swinging a bat'),
    ('a kite flying in the blue sky', 'a kite flying in the blue sky'),
    ('a skateboarder doing a trick on a ramp', 'a skateboarder doing a trick on a ramp'),
    ('the bottle is green and half-full', 'the bottle is green and half-full'),
    ('a small can on the left', 'a small can on the left'),
    ('a cup, a bowl and a spoon', 'a cup a bowl and a spoon'),
    ("what's on the table?", "what 's on the table"),
    ("it is the boy's ball", "it is the boy 's ball"),
    ("a ball that isn't round", "a ball that is n't round"),
    ("a dog wasn't there", "a dog was n't there"),
    ("they're standing in line", "they 're standing in line"),
    ("we've got two cups", "we 've got two cups"),
    ("an elephant's trunk", "an elephant 's trunk"),
    ('a 10-year-old boy', 'a 10-year-old boy'),
    ("the man's and woman's bags", "the man 's and woman 's bags"),
    ('a red (or maybe orange) ball', 'a red -lrb- or maybe orange -rrb- ball'),
    ('a zebra; another zebra', 'a zebra another zebra'),
    ('a dog/cat hybrid', 'a dog/cat hybrid'),
    ('a sign: no parking', 'a sign no parking'),
    ('a green bottle...', 'a green bottle'),
    ('a chair [broken]', 'a chair -lsb- broken -rsb-'),
    ("the lamp's shade is torn", "the lamp 's shade is torn"),
    ('two dogs playing frisbee!', 'two dogs playing frisbee'),
    ('3 bottles on a shelf', '3 bottles on a shelf'),
    ('a can of coke', 'a can of coke'),
    ('the surface is grass', 'the surface is grass'),
    ('a tall glass of milk.', 'a tall glass of milk'),
    ('a man riding a horse on a dirt road', 'a man riding a horse on a dirt road'),
    ('the cat is lying on the sofa , sleeping', 'the cat is lying on the sofa sleeping'),
    ('a yellow-green leaf', 'a yellow-green leaf'),
    ("'tis the season", "'t is the season"),
    ('a woman in a t-shirt', 'a woman in a t-shirt'),
    ('is it a dog ?', 'is it a dog'),
    ("a black cat 's tail", "a black cat 's tail"),
    ("don't touch", "do n't touch"),
    ('A green, glass Bottle.', 'a green glass bottle'),
    ("It's [0.10, 0.20]!", "it 's -lsb- 0.10 0.20 -rsb-"),
]


@pytest.mark.parametrize("caption, tokens", PTB_REFERENCE)
def test_caption_tokens_equal_coco_captions_ptb_tokenizer(caption, tokens):
    assert M.caption_tokens(caption) == tokens.split()


def test_caption_tokens_issue_cases():
    assert M.caption_tokens("the cat's toy") == ["the", "cat", "'s", "toy"]
    assert M.caption_tokens("It doesn't (really)") == ["it", "does", "n't", "-lrb-", "really", "-rrb-"]
    assert M.caption_tokens("a hot-dog") == ["a", "hot-dog"]
    assert M.caption_tokens("the cat’s toy") == ["the", "cat", "'s", "toy"]          # curly = straight
    assert M.ptb_tokens("Yes, St. Paul.") == ["yes", ",", "st.", "paul", "."]


def test_caption_tokens_known_differences_from_ptb():
    """Where PTB's lexer does more than caption_tokens (documented in metrics.py); pinned as they are."""
    assert M.caption_tokens("at 5:30pm") == ["at", "5:30pm"]             # PTB: at 5:30 pm
    assert M.caption_tokens("y'all") == ["y'all"]                        # PTB: y' all
    assert M.caption_tokens("ok?yes") == ["ok", "yes"]                   # PTB: ok?yes
    assert M.caption_tokens("a...") == ["a"]                             # PTB: a.


def test_caption_tokens_live_against_pycocoevalcap():
    """With pycocoevalcap and Java installed, compare with its tokenizer directly (else skipped)."""
    import shutil
    ptb = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    if shutil.which("java") is None:
        pytest.skip("no java")
    captions = [c for c, _ in PTB_REFERENCE]
    out = ptb.PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    assert [M.caption_tokens(c) for c in captions] == [out[i][0].split() for i in range(len(captions))]


def test_description_scores_equal_pycocoevalcap():
    """BLEU-1..4, ROUGE-L and CIDEr-D of raw captions equal pycocoevalcap's scorers on the PTB tokens the
    jar gives (PTB_REFERENCE), when pycocoevalcap is installed (else skipped; its scorers need no Java)."""
    bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    captions = [c for c, _ in PTB_REFERENCE]
    tokens = [t for _, t in PTB_REFERENCE]
    order = list(range(1, len(captions))) + [0]                 # hypothesis i is caption i+1: partial overlaps
    hyps = [captions[j] for j in order]
    gts = {i: [tokens[i]] for i in range(len(captions))}
    res = {i: [tokens[j]] for i, j in enumerate(order)}
    # ... and every third hypothesis is its own reference, so the scores are far from 0
    for i in range(0, len(captions), 3):
        hyps[i], res[i] = captions[i], [tokens[i]]
    b, _ = bleu_mod.Bleu(4).compute_score(gts, res, verbose=0)
    r, _ = Rouge().compute_score(gts, res)
    c, _ = Cider().compute_score(gts, res)
    ours = _scores("region_description", list(zip(hyps, captions)))
    assert [ours[f"bleu{k}"] for k in range(1, 5)] == pytest.approx(b, abs=1e-12)
    assert ours["rougeL"] == pytest.approx(r, abs=1e-12) and ours["cider"] == pytest.approx(c, abs=1e-12)


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


def test_grounding_reads_every_familys_box_notation():
    """Qwen2-VL's (x1,y1),(x2,y2) and Qwen2.5-VL's bbox_2d are scored in their own frame (IoU is frame-free)."""
    ref = "<|box_start|>(0,0),(1000,1000)<|box_end|>"
    assert _iou("<|box_start|>(0,0),(510,1000)<|box_end|>", ref) == pytest.approx(0.51)
    assert _iou("(0,0),(490,1000)", ref) == pytest.approx(0.49)     # special tokens skipped
    assert _iou('```json\n[{"bbox_2d": [0, 0, 50, 100], "label": "can"}]\n```',
                '{"bbox_2d": [0, 0, 100, 100]}') == pytest.approx(0.5)
    assert _iou("[0.50, 0.50, 0.20, 0.20]", "[0.00, 0.00, 1.00, 1.00]") == 0.0     # inverted: no box
    g = _scores("grounding", [("[0.50, 0.50, 0.20, 0.20]", "[0.00, 0.00, 1.00, 1.00]")])
    assert g == {"n": 1, "acc@0.5": 0.0, "mean_iou": 0.0, "no_box": 1}
