"""The scorer of stage 6 lives in :mod:`vlm_core.scoring`, where training's generation-based evaluation
(train_vlm.py --eval_generate) uses the same definition; this module keeps its public names importable
from here."""
from __future__ import annotations

from vlm_core.scoring import (
    ARTICLES,
    COMMA_STRIP,
    CONTRACTIONS,
    COUNT_KEYS,
    IOU_THRESHOLD,
    MANUAL_MAP,
    PERIOD_STRIP,
    PUNCT,
    UNTYPED,
    PredictionScorer,
    caption_tokens,
    difference,
    is_count_key,
    lcs_length,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    ptb_tokens,
    rouge_l,
    score_predictions,
)

__all__ = ["ARTICLES", "COMMA_STRIP", "CONTRACTIONS", "COUNT_KEYS", "IOU_THRESHOLD", "MANUAL_MAP", "PERIOD_STRIP",
           "PUNCT", "UNTYPED", "PredictionScorer", "caption_tokens", "difference", "is_count_key", "lcs_length",
           "normalize_answer", "process_digit_article", "process_punctuation", "ptb_tokens", "rouge_l",
           "score_predictions"]
