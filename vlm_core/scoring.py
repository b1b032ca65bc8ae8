"""Scoring of answers against references by question type, pure Python, no Java, no model: what
evaluate.py (stage 6) reports and what train_vlm.py --eval_generate logs while training, one definition.

- Short answers: exact match after the official VQA answer normalisation
  (``processPunctuation`` and ``processDigitArticle`` of the current official ``vqaEval.py``,
  GT-Vision-Lab/VQA master, commit a013f00 of 2021-03-11, ported with its tables and quirks:
  "Yes!" -> "yes", "hot-dog" -> "hot dog", "dont" -> "don't", "It's a dog" -> "it's dog").
  VQAv2 scores against 10 human answers with ``min(#matches / 3, 1)``; a Q&A pair here has one
  reference, so that becomes exact match. The official script normalises only when the human
  answers disagree (with one reference that would be never); here both sides are always
  normalised, so "Two" matches "2" either way round.
- Counts: also the first number in the answer against the first in the reference.
- Grounding: the first box in the answer against the reference box, both in the text frame
  of the model's family, read in any family's notation (``boxes.first_box``: "[x1, y1, x2, y2]",
  Qwen2-VL's "(x1,y1),(x2,y2)", '"bbox_2d": [...]'); IoU does not change under the per-axis scale
  and shift that maps a frame to pixels, so no image size is needed. IoU >= 0.5 is a hit; an
  answer without a box (or with an inverted one) has IoU 0.
- Region descriptions: BLEU-1..4 (corpus level, "closest" reference length), ROUGE-L
  (beta 1.2) and CIDEr-D (sigma 6, clipped tf-idf, idf over the evaluated references),
  ported from coco-caption (pycocoevalcap). Its Java PTB tokenizer (Stanford CoreNLP 3.4.1,
  then its PUNCTUATIONS filter) is reproduced by :func:`caption_tokens`: "cat's" -> cat 's,
  "doesn't" -> does n't, "(" -> -lrb- (kept, as coco-caption keeps it), hyphenated words whole;
  on 62 reference captions the tokens equal the jar's and BLEU/ROUGE-L/CIDEr-D equal
  pycocoevalcap's; the few cases where PTB's lexer differs are listed above ``caption_tokens``.
"""
from __future__ import annotations

import math
import re
from array import array
from collections import Counter
from functools import lru_cache
from typing import Iterable, Sequence

from vlm_core.boxes import first_box, iou
from vlm_core.schema import COUNT_TYPES, DESCRIPTION_TYPES, GROUNDING_TYPES

UNTYPED = "untyped"
IOU_THRESHOLD = 0.5

# ---------------------------------------------------------------------------------------
# VQA answer normalisation: GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py at
# commit a013f0043c1e2cdc995922dfe257f7149aa9af06 (master, 2021-03-11). The tables are the official
# ones as they are (straight apostrophes, odd entries such as "somebody'd" -> "somebodyd" included);
# tests/test_metrics.py checks these functions against the vendored official code
# (tests/vqa_eval_reference.py) string by string.
# ---------------------------------------------------------------------------------------
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
# Sic: "(?!<=\d)" is the official script's (a lookahead where a lookbehind was meant); kept.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def process_punctuation(in_text: str) -> str:
    """VQA ``processPunctuation``: drop or space out punctuation, strip sentence periods."""
    out_text = in_text
    # The official script searches for a digit-comma-digit once per mark; the answer is the same each time.
    strip_all = COMMA_STRIP.search(in_text) is not None
    for p in PUNCT:
        if p not in in_text:        # replacing marks never creates another one: nothing to do
            continue
        if strip_all or p + " " in in_text or " " + p in in_text:
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


# Short answers repeat ("yes", "2", "red"): a bounded cache makes each distinct one cost once.
@lru_cache(maxsize=1 << 16)
def normalize_answer(text: str) -> str:
    """An answer as the VQA evaluation compares it."""
    text = (text or "").replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _first_number_of(normalized: str) -> float | None:
    """The first number of a normalised answer (number words are digits by then: "Two." -> 2), or None."""
    words = normalized.split()
    for word in words:
        m = _NUMBER.fullmatch(word.replace(",", ""))
        if m:
            return float(m.group(0))
    # count_answer(0) says "There are no ...": "no" is the number there.
    return 0.0 if "no" in words else None


# ---------------------------------------------------------------------------------------
# Caption metrics, ported from coco-caption (pycocoevalcap): bleu_scorer.py, rouge.py, cider_scorer.py.
# ---------------------------------------------------------------------------------------
# coco-caption tokenizes with Stanford CoreNLP 3.4.1's PTBTokenizer (Java; ``-preserveLines -lowerCase``)
# and then drops the tokens in its PUNCTUATIONS list. caption_tokens() does the same in Python for
# the cases captions have, checked token for token against that jar (tests/test_metrics.py): possessives
# and contractions split ("cat's" -> cat 's, "doesn't" -> does n't, "can't" -> ca n't, "cannot" -> can
# not, "gonna" -> gon na), brackets become -lrb- -rrb- -lsb- -rsb- -lcb- -rcb- and stay (the list names
# them in upper case, the tokenizer writes them in lower case), hyphenated words, numbers ("3.5",
# "1,000", "3:30"), slashes and acronyms ("u.s.") stay whole, a sentence period is split off and
# dropped except after PTB's abbreviations ("st.", "mr.") and single letters, "$ # % &" are tokens of
# their own, curly quotes count as straight ones. Known differences (rare in captions): a time glued
# to a word ("5:30pm" -> PTB "5:30 pm"), "y'all", "rock'n'roll", "a..." (PTB "a. . .") and the
# other special cases of PTB's lexer (URLs, emoticons, fractions such as "1 1/2").
_PTB_PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                               "-", "--", "...", ";"])
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Words PTBTokenizer keeps with their period (checked against the jar; "no.", "in.", "fig." are split).
_PTB_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc inc ltd co corp ave prof mt ft lt gen rev jan feb sept oct dept sq rd blvd "
    "bros est cf al gov sen rep col capt sgt tel mo jun aug sep nov dec mar apr".split())
_PTB_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"],
                    "wanna": ["wan", "na"], "lemme": ["lem", "me"], "gimme": ["gim", "me"],
                    "'tis": ["'t", "is"], "'twas": ["'t", "was"]}
_PTB_QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"'})
# Always a token of their own: brackets, double quotes, ; ? ! and "..."/"--"; "," and ":" unless between digits.
_PTB_SPLIT = re.compile(r'(\.\.\.|--|[()\[\]{}";?!]|(?<!\d)[,:]|[,:](?!\d))')
_PTB_CLITIC = re.compile(r"^(.+?)(n't|'s|'m|'d|'re|'ve|'ll)$")
_PTB_AMPERSAND = re.compile(r"(&)")


def _ptb_piece(piece: str) -> list[str]:
    """PTB tokens of one piece of text with no space and none of the always-split marks."""
    front, back = [], []
    while len(piece) > 1 and piece[0] in "$#" and piece[1].isdigit():
        front.append(piece[0])
        piece = piece[1:]
    if piece.startswith("'") and piece not in _PTB_SPLIT_WORDS and not _PTB_CLITIC.match("x" + piece):
        front.append("`")
        piece = piece[1:]
    while len(piece) > 1:
        if piece.endswith("'"):
            back.append("'")
            piece = piece[:-1]
        elif piece.endswith("%"):
            back.append("%")
            piece = piece[:-1]
        elif piece.endswith("-"):
            back.append("-")
            piece = piece[:-1]
        elif piece.endswith(".") and not _ptb_keeps_period(piece[:-1]):
            back.append(".")
            piece = piece[:-1]
        else:
            break
    if piece.startswith("-") and len(piece) > 1 and not piece[1].isdigit():
        front.append("-")
        piece = piece[1:]
    if piece in _PTB_SPLIT_WORDS:
        middle = list(_PTB_SPLIT_WORDS[piece])
    elif "&" in piece and not piece.isupper():
        middle = [p for p in _PTB_AMPERSAND.split(piece) if p]
    else:
        m = _PTB_CLITIC.match(piece)
        middle = [m.group(1), m.group(2)] if m else ([piece] if piece else [])
    return front + middle + back[::-1]


def _ptb_keeps_period(word: str) -> bool:
    """Whether PTB keeps the final period of ``word + "."`` (an acronym, an initial or an abbreviation)."""
    if word.endswith("."):          # "b.." -> "b." "."
        return False
    return "." in word or (len(word) == 1 and word.isalpha()) or word in _PTB_ABBREVIATIONS


def ptb_tokens(text: str) -> list[str]:
    """The tokens PTBTokenizer (``-lowerCase``) gives for ``text``, punctuation tokens included."""
    text = (text or "").replace("\n", " ").translate(_PTB_QUOTES)
    out: list[str] = []
    for chunk in text.split():
        upper_amp = "&" in chunk and chunk.isupper()
        for piece in _PTB_SPLIT.split(chunk):
            if not piece:
                continue
            if piece in _PTB_BRACKETS:
                out.append(_PTB_BRACKETS[piece])
            elif piece == '"':
                out.append("``" if not out or out[-1] in _PTB_BRACKETS.values() else "''")
            elif len(piece) == 1 and piece in ",:;?!" or piece in ("...", "--"):
                out.append(piece)
            else:
                out.extend(t.lower() for t in (_ptb_piece(piece.lower()) if not upper_amp else [piece]))
    return out


_PLAIN_TEXT = re.compile(r"[a-z0-9 ]*")


def caption_tokens(text: str) -> list[str]:
    """The tokens coco-caption scores: PTB tokens, lowercased, without its PUNCTUATIONS."""
    low = (text or "").lower()
    if _PLAIN_TEXT.fullmatch(low):                  # most captions: PTB only splits at the spaces
        words = low.split()
        if not any(w in _PTB_SPLIT_WORDS for w in words):
            return words
    return [t for t in ptb_tokens(text) if t not in _PTB_PUNCTUATIONS]


def _orders(words: Sequence, n: int) -> list[Counter]:
    """Counts of the k-grams for k = 1..n, one Counter each, in coco-caption's order (by position)."""
    return [Counter(zip(*(words[i:] for i in range(k)))) for k in range(1, n + 1)]


def _bleu_counts(hyp: list[Counter], hyp_len: int, refs: Sequence[list[Counter]], ref_lens: Sequence[int],
                 n: int) -> tuple[int, int, list[int], list[int]]:
    """One item's (testlen, reflen, guess, correct) as coco-caption's ``BleuScorer`` accumulates them."""
    reflen = min((abs(r - hyp_len), r) for r in ref_lens)[1]
    guess = [max(0, hyp_len - k) for k in range(n)]
    correct = [0] * n
    for k in range(n):
        if len(refs) == 1:
            maxcounts = refs[0][k]
        else:
            maxcounts = {}
            for ref in refs:
                for ngram, count in ref[k].items():
                    if count > maxcounts.get(ngram, 0):
                        maxcounts[ngram] = count
        correct[k] = sum(min(maxcounts.get(ngram, 0), count) for ngram, count in hyp[k].items())
    return hyp_len, reflen, guess, correct


def _bleu_scores(testlen: int, reflen: int, guess: Sequence[int], correct: Sequence[int], n: int) -> list[float]:
    small, tiny = 1e-9, 1e-15
    scores = []
    ratio = (testlen + tiny) / (reflen + small)
    for nn in range(1, n + 1):
        score = 1.0
        for k in range(nn):
            score *= (correct[k] + tiny) / (guess[k] + small)
        score **= 1.0 / nn
        if ratio < 1:
            score *= math.exp(1 - 1 / ratio)
        scores.append(score)
    return scores


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Hyyrö 2004): one big-integer step per token of ``a`` instead of a
    ``len(a) x len(b)`` table; the result is the same integer.
    """
    if not a or not b:
        return 0
    masks: dict = {}
    for j, y in enumerate(b):
        masks[y] = masks.get(y, 0) | (1 << j)
    full = (1 << len(b)) - 1
    v = full
    for x in a:
        m = masks.get(x)
        if m is not None:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


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


def _cider_weights(doc_freq: dict, ref_len: float) -> dict:
    """``ref_len - log(max(1, df))`` of each n-gram of the references (coco-caption's idf factor)."""
    return {ngram: ref_len - math.log(max(1.0, df)) for ngram, df in doc_freq.items()}


def _cider_vec(orders: list[Counter], weights: dict, ref_len: float) -> tuple[list[dict], list[float], int]:
    """coco-caption's ``counts2vec``: tf-idf vectors per n-gram length, their norms, and its "length"."""
    vec, norm = [], []
    get = weights.get
    for counts in orders:
        v = {}
        total = 0.0
        for ngram, tf in counts.items():
            value = v[ngram] = float(tf) * get(ngram, ref_len)
            total += value ** 2
        vec.append(v)
        norm.append(math.sqrt(total))
    # sic: coco-caption's "length" counts bigrams
    return vec, norm, sum(orders[1].values()) if len(orders) > 1 else 0


def _cider_item(hyp: list[Counter], refs: Sequence[list[Counter]], weights: dict, ref_len: float,
                sigma: float) -> float:
    """One item's CIDEr-D (coco-caption's ``CiderScorer.compute_cider`` for one test)."""
    n = len(hyp)
    vec, norm, length = _cider_vec(hyp, weights, ref_len)
    total = [0.0] * n
    for ref in refs:
        vec_r, norm_r, length_r = _cider_vec(ref, weights, ref_len)
        delta = float(length - length_r)
        for k in range(n):
            val = 0.0
            ref_k = vec_r[k]
            for ngram, h in vec[k].items():
                r = ref_k.get(ngram, 0.0)
                if r:
                    val += min(h, r) * r
            if norm[k] != 0 and norm_r[k] != 0:
                val /= norm[k] * norm_r[k]
            val *= math.e ** (-(delta ** 2) / (2 * sigma ** 2))
            total[k] += val
    return sum(total) / n / len(refs) * 10.0


def _doc_freq_add(doc_freq: Counter, refs: Sequence[list[Counter]]) -> None:
    """One item's references add 1 to the document frequency of each n-gram they hold."""
    if len(refs) == 1:                  # the n-grams of one reference are distinct keys already
        for counts in refs[0]:
            doc_freq.update(counts.keys())
    else:
        doc_freq.update({g for ref in refs for counts in ref for g in counts})


# ---------------------------------------------------------------------------------------
# Scoring predictions by question type, a record at a time: each answer is normalised,
# tokenized and scored once, and only running sums are kept, except what CIDEr-D needs at
# the end (its document frequencies are taken over all references first): the description
# tokens as integer ids (4 bytes a token) and the n-gram document frequencies as counts.
# ---------------------------------------------------------------------------------------
def _ratio(total: float, n: int) -> float | None:
    return total / n if n else None


class _ShortAnswers:
    def __init__(self, counts: bool):
        self.counts = counts
        self.n = self.correct = 0
        self.exact = self.no_number = self.n_errors = 0
        self.error_sum = 0.0

    def add(self, answer: str, reference: str) -> None:
        a, r = normalize_answer(answer), normalize_answer(reference)
        self.n += 1
        self.correct += a == r
        if self.counts:
            na, nr = _first_number_of(a), _first_number_of(r)
            self.exact += na is not None and na == nr
            if na is None:
                self.no_number += 1
            elif nr is not None:
                self.n_errors += 1
                self.error_sum += abs(na - nr)

    def merge(self, other: "_ShortAnswers") -> None:
        self.n += other.n
        self.correct += other.correct
        self.exact += other.exact
        self.no_number += other.no_number
        self.n_errors += other.n_errors
        self.error_sum += other.error_sum

    def result(self) -> dict:
        out = {"n": self.n, "accuracy": _ratio(self.correct, self.n)}
        if self.counts:
            out.update(count_exact=_ratio(self.exact, self.n), count_mae=_ratio(self.error_sum, self.n_errors),
                       count_no_number=self.no_number)
        return out


class _Grounding:
    def __init__(self):
        self.n = self.hits = self.no_box = 0
        self.iou_sum = 0.0

    def add(self, answer: str, reference: str) -> None:
        box = first_box(answer)
        if box is None:
            self.no_box += 1
        ref_box = first_box(reference)
        if ref_box is None:
            return                  # cannot be scored (evaluate.py refuses such a reference)
        value = 0.0 if box is None else iou(box, ref_box)
        self.n += 1
        self.hits += value >= IOU_THRESHOLD
        self.iou_sum += value

    def result(self) -> dict:
        return {"n": self.n, "acc@0.5": _ratio(self.hits, self.n), "mean_iou": _ratio(self.iou_sum, self.n),
                "no_box": self.no_box}


class _Descriptions:
    """Region descriptions: token ids now, BLEU / ROUGE-L / CIDEr-D at the end."""
    N = 4
    SIGMA = 6.0

    def __init__(self, vocab: dict):
        self.vocab = vocab              # token -> id, shared by all description types
        self.tokens = array("i")        # hypothesis then reference ids of each item, back to back
        self.lengths = array("i")       # len(hyp), len(ref) of each item
        self.doc_freq: Counter = Counter()

    @property
    def n(self) -> int:
        return len(self.lengths) // 2

    def _ids(self, text: str) -> list[int]:
        vocab = self.vocab
        return [vocab.setdefault(t, len(vocab)) for t in caption_tokens(text)]

    def add(self, answer: str, reference: str) -> None:
        hyp, ref = self._ids(answer), self._ids(reference)
        self.tokens.extend(hyp)
        self.tokens.extend(ref)
        self.lengths.append(len(hyp))
        self.lengths.append(len(ref))
        _doc_freq_add(self.doc_freq, [_orders(ref, self.N)])

    def items(self):
        pos, lengths, tokens = 0, self.lengths, self.tokens
        for i in range(0, len(lengths), 2):
            hyp = tokens[pos:pos + lengths[i]].tolist()
            pos += lengths[i]
            ref = tokens[pos:pos + lengths[i + 1]].tolist()
            pos += lengths[i + 1]
            yield hyp, ref

    def result(self, doc_freq: dict | None = None, items=None, n_items: int | None = None) -> dict:
        n = self.N
        n_items = self.n if n_items is None else n_items
        out: dict = {"n": n_items}
        if not n_items:
            return out
        ref_len = math.log(float(n_items))
        weights = _cider_weights(self.doc_freq if doc_freq is None else doc_freq, ref_len)
        guess, correct = [0] * n, [0] * n
        testlen_total = reflen_total = 0
        rouge_sum = cider_sum = 0.0
        for hyp, ref in (self.items() if items is None else items):
            hyp_orders, ref_orders = _orders(hyp, n), _orders(ref, n)
            t, r, g, c = _bleu_counts(hyp_orders, len(hyp), [ref_orders], [len(ref)], n)
            testlen_total += t
            reflen_total += r
            for k in range(n):
                guess[k] += g[k]
                correct[k] += c[k]
            rouge_sum += rouge_l(hyp, [ref])
            cider_sum += _cider_item(hyp_orders, [ref_orders], weights, ref_len, self.SIGMA)
        for k, value in enumerate(_bleu_scores(testlen_total, reflen_total, guess, correct, n), start=1):
            out[f"bleu{k}"] = value
        out["rougeL"] = rouge_sum / n_items
        # CIDEr-D's idf is log(N / df): with one description every weight is 0, so the score
        # says nothing; report it as missing instead of a misleading 0.
        out["cider"] = cider_sum / n_items if n_items >= 2 else None
        return out


def _pooled_descriptions(parts: list[_Descriptions]) -> dict:
    """Descriptions of several types scored together (document frequencies over all of them)."""
    if len(parts) == 1:
        return parts[0].result()
    doc_freq: Counter = Counter()
    for part in parts:
        doc_freq.update(part.doc_freq)
    items = (item for part in parts for item in part.items())
    return parts[0].result(doc_freq=doc_freq, items=items, n_items=sum(p.n for p in parts))


def _kind(qtype: str) -> str:
    if qtype in GROUNDING_TYPES:
        return "grounding"
    if qtype in DESCRIPTION_TYPES:
        return "description"
    return "short"


class PredictionScorer:
    """Scores prediction records one at a time; :meth:`result` gives what :func:`score_predictions` gives.

    ``add`` takes a record's ``answer``, ``reference`` and ``type`` (None -> "untyped").
    """

    def __init__(self):
        self.n = 0
        self.per_type: dict = {}
        self._vocab: dict = {}

    def add(self, answer: str, reference: str, qtype: str | None) -> None:
        qtype = qtype or UNTYPED
        scorer = self.per_type.get(qtype)
        if scorer is None:
            kind = _kind(qtype)
            scorer = (_Grounding() if kind == "grounding" else _Descriptions(self._vocab) if kind == "description"
                      else _ShortAnswers(counts=qtype in COUNT_TYPES))
            self.per_type[qtype] = scorer
        self.n += 1
        scorer.add(answer, reference)

    def result(self) -> dict:
        per = self.per_type
        per_type = {t: per[t].result() for t in sorted(per)}
        overall: dict = {"n": self.n}
        short = [s for t, s in per.items() if _kind(t) == "short"]
        if short:
            pooled = _ShortAnswers(counts=False)
            for s in short:
                pooled.merge(s)
            overall.update(n_short_answer=pooled.n, accuracy=pooled.result()["accuracy"])
        counted = [per[t] for t in COUNT_TYPES if t in per]
        if counted:
            pooled = _ShortAnswers(counts=True)
            for s in counted:
                pooled.merge(s)
            c = pooled.result()
            overall.update(n_count=pooled.n, count_exact=c["count_exact"], count_mae=c["count_mae"])
        grounding = [per[t] for t in GROUNDING_TYPES if t in per]
        if grounding:
            pooled = _Grounding()
            for g in grounding:
                pooled.n += g.n
                pooled.hits += g.hits
                pooled.iou_sum += g.iou_sum
                pooled.no_box += g.no_box
            g = pooled.result()
            overall.update({"n_grounding": g["n"], "acc@0.5": g["acc@0.5"], "mean_iou": g["mean_iou"]})
        described = [t for t in DESCRIPTION_TYPES if t in per]
        if described:
            # one description type (the usual case): its per-type scores are the pooled ones
            d = per_type[described[0]] if len(described) == 1 else _pooled_descriptions([per[t] for t in described])
            overall.update(n_region_description=d["n"], bleu4=d["bleu4"], rougeL=d["rougeL"], cider=d["cider"])
        return {"overall": overall, "per_type": per_type}


def score_predictions(preds: Iterable[dict]) -> dict:
    """``{"overall": {...}, "per_type": {type: {...}}}`` for prediction records.

    Each record needs ``answer``, ``reference`` and ``type`` (None -> "untyped").
    ``overall`` pools each metric over the types it applies to.
    """
    scorer = PredictionScorer()
    for p in preds:
        scorer.add(p["answer"], p["reference"], p.get("type"))
    return scorer.result()


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
