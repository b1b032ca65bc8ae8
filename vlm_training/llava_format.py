"""The LLaVA conversation file: the record format that convert writes and training, prediction
and evaluation read. Torch-free, so that reading or checking a file never loads a model library.

A record::

    {"id": "scenes/a.jpg#0", "image": "scenes/a.jpg", "width": 640, "height": 480,
     "conversations": [{"from": "human", "value": "<image>\\nQ1"}, {"from": "gpt", "value": "A1"},
                       {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}],
     "qa_types": ["count", "region_description"]}

``<image>`` appears once, at the start of the first human turn (as original LLaVA writes it);
``qa_types`` (one per turn pair) is ignored by LLaVA loaders and used here to score by type.
"""
from __future__ import annotations

import os
from pathlib import Path

from vlm_annotation.io_utils import InputError, read_json
from vlm_annotation.prompts import IMAGE_TOKEN
from vlm_annotation.schema import QA_TYPES

IMAGE_PLACEHOLDER = IMAGE_TOKEN + "\n"  # how the first human turn starts


def record_where(path: Path, index: int, record) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{path}: record {index}" + (f" (id {rid!r})" if isinstance(rid, str) else "")


def validate_llava_records(data, path: str | os.PathLike) -> list[dict]:
    """Check the LLaVA file's structure; the first problem raises InputError naming record and field."""
    path = Path(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of LLaVA records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        where = record_where(path, i, rec)
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected an object, got {type(rec).__name__}")
        if not isinstance(rec.get("id"), str) or not rec["id"]:
            raise InputError(f"{where}: field 'id' must be a non-empty string")
        if not isinstance(rec.get("image"), str) or not rec["image"].strip():
            raise InputError(f"{where}: field 'image' must be a non-empty string (path relative to --image_dir)")
        conv = rec.get("conversations")
        if not isinstance(conv, list) or len(conv) < 2:
            raise InputError(f"{where}: field 'conversations' must be a list of at least one human/gpt pair")
        if len(conv) % 2:
            raise InputError(f"{where}: field 'conversations' has {len(conv)} turns; "
                             "expected human/gpt pairs (the last turn must be 'gpt')")
        for j, turn in enumerate(conv):
            expected = "human" if j % 2 == 0 else "gpt"
            if not isinstance(turn, dict):
                raise InputError(f"{where}: conversations[{j}] must be an object with 'from' and 'value'")
            if turn.get("from") != expected:
                raise InputError(f"{where}: conversations[{j}].from must be {expected!r}, got {turn.get('from')!r}")
            value = turn.get("value")
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: conversations[{j}].value must be a non-empty string")
            if j == 0 and not value.startswith(IMAGE_PLACEHOLDER):
                raise InputError(f"{where}: conversations[0].value must start with '<image>\\n'")
            if j == 0 and not value[len(IMAGE_PLACEHOLDER):].strip():
                raise InputError(f"{where}: conversations[0].value: empty question after '<image>\\n'")
            if IMAGE_TOKEN in (value[len(IMAGE_PLACEHOLDER):] if j == 0 else value):
                raise InputError(f"{where}: conversations[{j}].value: '<image>' may appear only once, "
                                 "at the start of the first human turn")
        qa_types = rec.get("qa_types")
        if qa_types is not None and not (isinstance(qa_types, list) and len(qa_types) == len(conv) // 2):
            raise InputError(f"{where}: field 'qa_types' must be a list with one entry per turn pair "
                             f"({len(conv) // 2})")
        for j, qtype in enumerate(qa_types or []):
            if qtype is not None and qtype not in QA_TYPES:
                raise InputError(f"{where}: qa_types[{j}]: {qtype!r} is not one of {', '.join(QA_TYPES)}")
    return data


def load_llava_file(path: str | os.PathLike, flag: str) -> list[dict]:
    """Read and validate a LLaVA JSON file given by ``flag``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{flag}: file not found: {p}")
    records = validate_llava_records(read_json(p), p)
    if not records:
        raise InputError(f"{flag}: {p} holds no records")
    return records


def resolve_image_path(image_dir: Path, rel: str, where: str) -> Path:
    """``image_dir / rel``, refused when it escapes ``image_dir`` (absolute path, ``..``, symlink)."""
    root = image_dir.resolve()
    candidate = (root / rel).resolve()
    if Path(rel).is_absolute() or not candidate.is_relative_to(root):
        raise InputError(f"{where}: image path {rel!r} escapes --image_dir {image_dir}")
    if not candidate.is_file():
        raise InputError(f"{where}: image not found: {image_dir / rel}")
    return candidate
