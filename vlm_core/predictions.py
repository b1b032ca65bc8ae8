"""The prediction record: one line of ``predictions.jsonl``, written by predict.py, read by evaluate.py.

    {"id": "scenes/a.jpg#0", "image": "scenes/a.jpg", "turn": 0, "question": "How many objects are there?",
     "answer": "There are 3 objects in this image.", "reference": "There are 3 objects in this image.",
     "type": "count", "model": "/abs/vlm_model (base /abs/llava)"}

``id`` and ``turn`` name the question (the LLaVA record and its human turn); ``type`` is one of
``schema.QA_TYPES`` or null; ``model`` says which model answered, so a resumed file never mixes two.
Evaluation needs only ``answer`` and ``reference`` (plus ``type`` to score by type): files written by
other tools in that shape are scored too. A grounding line also carries ``box_frame`` (the frame it was asked
in) and ``image_size`` (``[w, h]``, as displayed), written by predict.py and read by evaluate.py
(:func:`vlm_core.frame_check.read_frame_fields`); both optional.
"""
from __future__ import annotations

from vlm_core.boxes import first_box
from vlm_core.io_utils import InputError
from vlm_core.schema import GROUNDING_TYPES


def prediction_record(question: dict, answer: str, model: str) -> dict:
    """The line predict.py writes for one answered ``question`` (a dict with id, image, turn, question,
    reference, type)."""
    return {"id": question["id"], "image": question["image"], "turn": question["turn"],
            "question": question["question"], "answer": answer, "reference": question["reference"],
            "type": question["type"], "model": model}


def check_prediction(rec, where: str) -> None:
    """The fields evaluation reads, checked once per record; errors name the file and line."""
    if not isinstance(rec, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for key in ("answer", "reference"):
        if key not in rec:
            raise InputError(f"{where}: {key}: missing")
        if not isinstance(rec[key], str):
            raise InputError(f"{where}: {key}: expected a string, got {type(rec[key]).__name__}")
    qtype = rec.get("type")
    if qtype is not None and (not isinstance(qtype, str) or not qtype):
        raise InputError(f"{where}: type: expected a question type name or null")
    if "id" in rec and not isinstance(rec["id"], str):
        raise InputError(f"{where}: id: expected a string")
    turn = rec.get("turn", 0)
    if not isinstance(turn, int) or isinstance(turn, bool) or turn < 0:
        raise InputError(f"{where}: turn: expected a non-negative integer")
    if qtype in GROUNDING_TYPES and first_box(rec["reference"]) is None:
        raise InputError(f"{where}: reference: a grounding reference must hold a box like [0.10, 0.20, 0.30, 0.40]")


def is_prediction_line(rec) -> bool:
    """Whether a line of an existing output file is a prediction this stage wrote (it has id and turn)."""
    return isinstance(rec, dict) and "id" in rec and "turn" in rec
