"""Scoring functions for stage 6, pure Python, no Java, no model.

- Short answers: exact match after the official VQAv2 answer normalisation
  (``processPunctuation`` and ``processDigitArticle`` of the VQA evaluation script,
  ported with its tables and quirks). VQAv2 scores against 10 human answers with
  ``min(#matches / 3, 1)``; a Q&A pair here has one reference, so that becomes exact match,
  and the normalisation is applied to both sides so "Two" matches "2" either way round.
- Counts: also the first number in the answer against the first in the reference.
- Grounding: the first box in the answer against the reference box, both in the text
  frame (``boxes.parse_box``); IoU >= 0.5 is a hit; an answer without a box has IoU 0.
- Region descriptions: BLEU-1..4 (corpus level, "closest" reference length), ROUGE-L
  (beta 1.2) and CIDEr-D (sigma 6, clipped tf-idf, idf over the evaluated references),
  ported from coco-caption (pycocoevalcap). Its Java PTB tokenizer is replaced by
  :func:`caption_tokens` (lowercase, punctuation dropped), which gives the same tokens for
  plain English captions.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Iterable, Sequence

from vlm_annotation.boxes import iou, parse_box

SHORT_ANSWER_TYPES = ("count", "count_class", "exists", "region_label", "location", "relation")
COUNT_TYPES = ("count", "count_class")
GROUNDING_TYPES = ("grounding",)
DESCRIPTION_TYPES = ("region_description",)
UNTYPED = "untyped"
IOU_THRESHOLD = 0.5

# ---------------------------------------------------------------------------------------
# VQAv2 answer normalisation (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py).
# The tables are copied as they are, curly apostrophes and all.
# ---------------------------------------------------------------------------------------
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn’t’ve", "couldnt’ve": "couldn’t’ve", "didnt": "didn’t", "doesnt": "doesn’t",
    "dont": "don’t", "hadnt": "hadn’t", "hadnt’ve": "hadn’t’ve", "hadn'tve": "hadn’t’ve", "hasnt": "hasn’t",
    "havent": "haven’t", "hed": "he’d", "hed’ve": "he’d’ve", "he’dve": "he’d’ve", "hes": "he’s",
    "howd": "how’d", "howll": "how’ll", "hows": "how’s", "Id’ve": "I’d’ve", "I’dve": "I’d’ve", "Im": "I’m",
    "Ive": "I’ve", "isnt": "isn’t", "itd": "it’d", "itd’ve": "it’d’ve", "it’dve": "it’d’ve", "itll": "it’ll",
    "let’s": "let’s", "maam": "ma’am", "mightnt": "mightn’t", "mightnt’ve": "mightn’t’ve",
    "mightn’tve": "mightn’t’ve", "mightve": "might’ve", "mustnt": "mustn’t", "mustve": "must’ve",
    "neednt": "needn’t", "notve": "not’ve", "oclock": "o’clock", "oughtnt": "oughtn’t",
    "ow’s’at": "’ow’s’at", "’ows’at": "’ow’s’at", "’ow’sat": "’ow’s’at", "shant": "shan’t",
    "shed’ve": "she’d’ve", "she’dve": "she’d’ve", "she’s": "she’s", "shouldve": "should’ve",
    "shouldnt": "shouldn’t", "shouldnt’ve": "shouldn’t’ve", "shouldn’tve": "shouldn’t’ve",
    "somebody’d": "somebodyd", "somebodyd’ve": "somebody’d’ve", "somebody’dve": "somebody’d’ve",
    "somebodyll": "somebody’ll", "somebodys": "somebody’s", "someoned": "someone’d",
    "someoned’ve": "someone’d’ve", "someone’dve": "someone’d’ve", "someonell": "someone’ll",
    "someones": "someone’s", "somethingd": "something’d", "somethingd’ve": "something’d’ve",
    "something’dve": "something’d’ve", "somethingll": "something’ll", "thats": "that’s",
    "thered": "there’d", "thered’ve": "there’d’ve", "there’dve": "there’d’ve", "therere": "there’re",
    "theres": "there’s", "theyd": "they’d", "theyd’ve": "they’d’ve", "they’dve": "they’d’ve",
    "theyll": "they’ll", "theyre": "they’re", "theyve": "they’ve", "twas": "’twas", "wasnt": "wasn’t",
    "wed’ve": "we’d’ve", "we’dve": "we’d’ve", "weve": "we've", "werent": "weren’t", "whatll": "what’ll",
    "whatre": "what’re", "whats": "what’s", "whatve": "what’ve", "whens": "when’s", "whered": "where’d",
    "wheres": "where's", "whereve": "where’ve", "whod": "who’d", "whod’ve": "who’d’ve",
    "who’dve": "who’d’ve", "wholl": "who’ll", "whos": "who’s", "whove": "who've", "whyll": "why’ll",
    "whyre": "why’re", "whys": "why’s", "wont": "won’t", "wouldve": "would’ve", "wouldnt": "wouldn’t",
    "wouldnt’ve": "wouldn’t’ve", "wouldn’tve": "wouldn’t’ve", "yall": "y’all", "yall’ll": "y’all’ll",
    "y’allll": "y’all’ll", "yall’d’ve": "y’all’d’ve", "y’alld’ve": "y’all’d’ve", "y’all’dve": "y’all’d’ve",
    "youd": "you’d", "youd’ve": "you’d’ve", "you’dve": "you’d’ve", "youll": "you’ll", "youre": "you’re",
    "youve": "you’ve",
}
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
# Sic: "(?!<=\d)" is the official script's (a lookahead where a lookbehind was meant); kept.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
PUNCT = [";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?"]


def process_punctuation(in_text: str) -> str:
    """VQA ``processPunctuation``: drop or space out punctuation, strip sentence periods."""
    out_text = in_text
    for p in PUNCT:
        if (p + " " in in_text or " " + p in in_text) or COMMA_STRIP.search(in_text) is not None:
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    # The official call passes re.UNICODE (32) where sub() takes its count: at most 32 periods.
    return PERIOD_STRIP.sub("", out_text, count=int(re.UNICODE))


def process_digit_article(in_text: str) -> str:
    """VQA ``processDigitArticle``: lowercase, number words to digits, drop articles, contractions."""
    words = []
    for word in in_text.lower().split():
        word = MANUAL_MAP.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """An answer as the VQA evaluation compares it."""
    text = (text or "").replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def answers_match(answer: str, reference: str) -> bool:
    return normalize_answer(answer) == normalize_answer(reference)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def first_number(text: str) -> float | None:
    """The first number in an answer after normalisation ("Two." -> 2, "There are no cans" -> 0)."""
    words = normalize_answer(text).split()
    for word in words:
        m = _NUMBER.fullmatch(word.replace(",", ""))
        if m:
            return float(m.group(0))
    # count_answer(0) says "There are no ...": "no" is the number there.
    return 0.0 if "no" in words else None


def grounding_iou(answer: str, reference: str) -> float | None:
    """IoU of the first box in ``answer`` with the box in ``reference`` (text frame).

    0.0 when the answer has no box; None when the reference has none (cannot be scored).
    """
    ref_box = parse_box(reference)
    if ref_box is None:
        return None
    box = parse_box(answer)
    return 0.0 if box is None else iou(box, ref_box)


# ---------------------------------------------------------------------------------------
# Caption metrics, ported from coco-caption (pycocoevalcap): bleu_scorer.py, rouge.py, cider_scorer.py.
# ---------------------------------------------------------------------------------------
_CAPTION_TOKEN = re.compile(r"[a-z0-9]+(?:['’][a-z]+)*")


def caption_tokens(text: str) -> list[str]:
    """Lowercase word tokens with punctuation removed (what coco-caption's PTB tokenizer feeds its scorers)."""
    return _CAPTION_TOKEN.findall((text or "").lower())


def _ngrams(words: Sequence[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as coco-caption computes it ("closest" reference length, its smoothing).

    ``hypotheses[i]`` is a token list, ``references[i]`` a list of token lists.
    """
    small, tiny = 1e-9, 1e-15
    guess, correct = [0] * n, [0] * n
    testlen_total = reflen_total = 0
    for hyp, refs in zip(hypotheses, references):
        maxcounts: dict = {}
        for ref in refs:
            for ngram, count in _ngrams(ref, n).items():
                maxcounts[ngram] = max(maxcounts.get(ngram, 0), count)
        testlen = len(hyp)
        reflen = min((abs(len(r) - testlen), len(r)) for r in refs)[1]
        testlen_total += testlen
        reflen_total += reflen
        for k in range(n):
            guess[k] += max(0, testlen - k)
        for ngram, count in _ngrams(hyp, n).items():
            correct[len(ngram) - 1] += min(maxcounts.get(ngram, 0), count)
    scores = []
    ratio = (testlen_total + tiny) / (reflen_total + small)
    for nn in range(1, n + 1):
        score = 1.0
        for k in range(nn):
            score *= (correct[k] + tiny) / (guess[k] + small)
        score **= 1.0 / nn
        if ratio < 1:
            score *= math.exp(1 - 1 / ratio)
        scores.append(score)
    return scores


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """ROUGE-L F-score of one hypothesis (coco-caption: best precision and recall over references)."""
    if not hypothesis:
        return 0.0
    precs, recs = [], []
    for ref in references:
        lcs = lcs_length(ref, hypothesis)
        precs.append(lcs / len(hypothesis))
        recs.append(lcs / len(ref) if ref else 0.0)
    p, r = max(precs), max(recs)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + beta ** 2) * p * r) / (r + beta ** 2 * p)


def cider_d(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
            n: int = 4, sigma: float = 6.0) -> list[float]:
    """CIDEr-D per item, as coco-caption's ``CiderScorer`` (mean of the list is the corpus score).

    Document frequencies come from the references of the items scored together, so the
    value depends on the evaluated set (as in coco-caption); one item alone scores 0.
    """
    crefs = [[_ngrams(r, n) for r in refs] for refs in references]
    ctest = [_ngrams(h, n) for h in hypotheses]
    doc_freq: dict = defaultdict(float)
    for refs in crefs:
        for ngram in {g for ref in refs for g in ref}:
            doc_freq[ngram] += 1
    ref_len = math.log(float(len(crefs))) if crefs else 0.0

    def counts2vec(cnts):
        vec = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, tf in cnts.items():
            df = math.log(max(1.0, doc_freq[ngram]))
            k = len(ngram) - 1
            vec[k][ngram] = float(tf) * (ref_len - df)
            norm[k] += vec[k][ngram] ** 2
            if k == 1:          # sic: coco-caption's "length" counts bigrams
                length += tf
        return vec, [math.sqrt(v) for v in norm], length

    def sim(vec_h, vec_r, norm_h, norm_r, len_h, len_r):
        delta = float(len_h - len_r)
        val = [0.0] * n
        for k in range(n):
            for ngram in vec_h[k]:
                val[k] += min(vec_h[k][ngram], vec_r[k].get(ngram, 0.0)) * vec_r[k].get(ngram, 0.0)
            if norm_h[k] != 0 and norm_r[k] != 0:
                val[k] /= norm_h[k] * norm_r[k]
            val[k] *= math.e ** (-(delta ** 2) / (2 * sigma ** 2))
        return val

    scores = []
    for test, refs in zip(ctest, crefs):
        vec, norm, length = counts2vec(test)
        total = [0.0] * n
        for ref in refs:
            vec_r, norm_r, length_r = counts2vec(ref)
            total = [a + b for a, b in zip(total, sim(vec, vec_r, norm, norm_r, length, length_r))]
        scores.append(sum(total) / n / len(refs) * 10.0)
    return scores


# ---------------------------------------------------------------------------------------
# Scoring a list of predictions by question type.
# ---------------------------------------------------------------------------------------
def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def score_short_answers(preds: Sequence[dict], counts: bool = False) -> dict:
    out = {"n": len(preds), "accuracy": _mean(float(answers_match(p["answer"], p["reference"])) for p in preds)}
    if counts:
        pairs = [(first_number(p["answer"]), first_number(p["reference"])) for p in preds]
        out["count_exact"] = _mean(float(a is not None and a == r) for a, r in pairs)
        errors = [abs(a - r) for a, r in pairs if a is not None and r is not None]
        out["count_mae"] = _mean(errors)
        out["count_no_number"] = sum(1 for a, _ in pairs if a is None)
    return out


def score_grounding(preds: Sequence[dict]) -> dict:
    ious = [grounding_iou(p["answer"], p["reference"]) for p in preds]
    ious = [v for v in ious if v is not None]
    return {"n": len(ious), "acc@0.5": _mean(float(v >= IOU_THRESHOLD) for v in ious),
            "mean_iou": _mean(ious), "no_box": sum(1 for p in preds if parse_box(p["answer"]) is None)}


def score_descriptions(preds: Sequence[dict]) -> dict:
    hyps = [caption_tokens(p["answer"]) for p in preds]
    refs = [[caption_tokens(p["reference"])] for p in preds]
    out: dict = {"n": len(preds)}
    if not preds:
        return out
    for k, value in enumerate(bleu(hyps, refs), start=1):
        out[f"bleu{k}"] = value
    out["rougeL"] = _mean(rouge_l(h, r) for h, r in zip(hyps, refs))
    # CIDEr-D's idf is log(N / df): with one description every weight is 0, so the score
    # says nothing; report it as missing instead of a misleading 0.
    out["cider"] = _mean(cider_d(hyps, refs)) if len(preds) >= 2 else None
    return out


def score_type(qtype: str, preds: Sequence[dict]) -> dict:
    """Metrics of one question type (unknown types are scored as short answers)."""
    if qtype in GROUNDING_TYPES:
        return score_grounding(preds)
    if qtype in DESCRIPTION_TYPES:
        return score_descriptions(preds)
    return score_short_answers(preds, counts=qtype in COUNT_TYPES)


def score_predictions(preds: Sequence[dict]) -> dict:
    """``{"overall": {...}, "per_type": {type: {...}}}`` for prediction records.

    Each record needs ``answer``, ``reference`` and ``type`` (None -> "untyped").
    ``overall`` pools each metric over the types it applies to.
    """
    by_type: dict[str, list[dict]] = defaultdict(list)
    for p in preds:
        by_type[p.get("type") or UNTYPED].append(p)
    per_type = {t: score_type(t, by_type[t]) for t in sorted(by_type)}
    short = [p for t, ps in by_type.items() if t not in GROUNDING_TYPES + DESCRIPTION_TYPES for p in ps]
    counted = [p for t in COUNT_TYPES for p in by_type.get(t, [])]
    grounding = [p for t in GROUNDING_TYPES for p in by_type.get(t, [])]
    described = [p for t in DESCRIPTION_TYPES for p in by_type.get(t, [])]
    overall: dict = {"n": len(preds)}
    if short:
        overall.update(n_short_answer=len(short), accuracy=score_short_answers(short)["accuracy"])
    if counted:
        c = score_short_answers(counted, counts=True)
        overall.update(n_count=len(counted), count_exact=c["count_exact"], count_mae=c["count_mae"])
    if grounding:
        g = score_grounding(grounding)
        overall.update({"n_grounding": g["n"], "acc@0.5": g["acc@0.5"], "mean_iou": g["mean_iou"]})
    if described:
        d = score_descriptions(described)
        overall.update(n_region_description=d["n"], bleu4=d["bleu4"], rougeL=d["rougeL"], cider=d["cider"])
    return {"overall": overall, "per_type": per_type}


COUNT_KEYS = ("n", "count_no_number", "no_box")


def is_count_key(key: str) -> bool:
    """Keys that hold how many records a metric covers, not a score."""
    return key in COUNT_KEYS or key.startswith("n_")


def difference(model: dict, baseline: dict) -> dict:
    """``model - baseline`` for every score both have (same nesting as ``score_predictions``)."""
    def diff(a: dict, b: dict) -> dict:
        return {k: a[k] - b[k] for k in a
                if k in b and not is_count_key(k) and isinstance(a[k], (int, float)) and isinstance(b[k], (int, float))}
    return {"overall": diff(model["overall"], baseline["overall"]),
            "per_type": {t: diff(model["per_type"][t], baseline["per_type"][t])
                         for t in model["per_type"] if t in baseline["per_type"]}}
