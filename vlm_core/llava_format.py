"""The LLaVA conversation file: the record format that convert writes and training, prediction
and evaluation read. Torch-free, so that reading or checking a file never loads a model library.

A record::

    {"id": "scenes/a.jpg#0", "image": "scenes/a.jpg", "width": 640, "height": 480,
     "conversations": [{"from": "human", "value": "<image>\\nQ1"}, {"from": "gpt", "value": "A1"},
                       {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}],
     "qa_types": ["count", "region_description"]}

``<image>`` appears once, at the start of the first human turn (as original LLaVA writes it);
``qa_types`` (one per turn pair) is ignored by LLaVA loaders and used here to score by type.

A record converted with visual box prompts (``--box_prompt visual`` or ``both``) also says which boxes
are drawn on its image before the model sees it, in pixels of the displayed image, each in the colour
its questions name it by (every turn of the record is asked about that one drawn image)::

    "box_prompt": {"mode": "visual", "boxes": [{"bbox": [12.5, 200.0, 96.0, 340.25], "colour": "red"}]}

(``boxes`` is empty for a record of image-level questions). A record without it names its boxes in text.

The file is a JSON list (what LLaVA and LLaMA-Factory read), or JSONL (one record a line) when
its name ends in ``.jsonl``. :func:`iter_llava_records` streams either, validating each record
once; :class:`LlavaWriter` writes either, record by record.

Image paths, one rule for every stage: a record's ``image`` is relative to ``--image_dir``,
without ``..`` and without NUL bytes; symlinks inside ``--image_dir`` are followed wherever they
point (a folder of links into a shared dataset is a common layout), exactly as annotation,
which listed the folder, followed them. See :func:`resolve_image_path`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator

from vlm_core.families import FRAME_KEY, BoxFrame, FamilyError
from vlm_core.images import BOX_PROMPT_COLOURS
from vlm_core.io_utils import InputError, NotAJsonList, RecordWriter, is_jsonl, stream_json, stream_jsonl
from vlm_core.prompts import BOX_PROMPTS, IMAGE_TOKEN
from vlm_core.schema import QA_TYPES

IMAGE_PLACEHOLDER = IMAGE_TOKEN + "\n"  # how the first human turn starts
BOX_PROMPT_KEY = "box_prompt"           # the boxes drawn on a record's image (visual box prompts)


def record_where(path: Path, index: int, record) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{path}: record {index}" + (f" (id {rid!r})" if isinstance(rid, str) else "")


def validate_llava_record(rec: Any, where: str) -> dict:
    """Check one record; the first problem raises InputError naming ``where`` and the field."""
    if not isinstance(rec, dict):
        raise InputError(f"{where}: expected an object, got {type(rec).__name__}")
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        raise InputError(f"{where}: field 'id' must be a non-empty string")
    if not isinstance(rec.get("image"), str) or not rec["image"].strip():
        raise InputError(f"{where}: field 'image' must be a non-empty string (path relative to --image_dir)")
    check_image_path(rec["image"], f"{where}: field 'image'")
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
            raise InputError(f"{where}: conversations[0].value must start with {IMAGE_PLACEHOLDER!r}")
        if j == 0 and not value[len(IMAGE_PLACEHOLDER):].strip():
            raise InputError(f"{where}: conversations[0].value: empty question after {IMAGE_PLACEHOLDER!r}")
        if IMAGE_TOKEN in (value[len(IMAGE_PLACEHOLDER):] if j == 0 else value):
            raise InputError(f"{where}: conversations[{j}].value: {IMAGE_TOKEN!r} may appear only once, "
                             "at the start of the first human turn")
    qa_types = rec.get("qa_types")
    if qa_types is not None and not (isinstance(qa_types, list) and len(qa_types) == len(conv) // 2):
        raise InputError(f"{where}: field 'qa_types' must be a list with one entry per turn pair "
                         f"({len(conv) // 2})")
    for j, qtype in enumerate(qa_types or []):
        if qtype is not None and qtype not in QA_TYPES:
            raise InputError(f"{where}: qa_types[{j}]: {qtype!r} is not one of {', '.join(QA_TYPES)}")
    if BOX_PROMPT_KEY in rec:
        check_box_prompt_field(rec[BOX_PROMPT_KEY], f"{where}: field {BOX_PROMPT_KEY!r}")
    if FRAME_KEY in rec:  # the box frame the record was rendered for (absent: LLaVA-1.5's)
        try:
            BoxFrame.from_dict(rec[FRAME_KEY], where=f"{where}: {FRAME_KEY}")
        except FamilyError as e:
            raise InputError(str(e)) from None
    return rec


def check_drawn_boxes(boxes: Any, where: str) -> list:
    """Boxes to draw on an image: a list of ``{"bbox": [x1, y1, x2, y2], "colour": NAME}`` (pixels, corners in
    order; a colour of vlm_core.images.BOX_PROMPT_COLOURS); InputError naming ``where`` and the entry."""
    if not isinstance(boxes, list):
        raise InputError(f"{where}: boxes must be a list of {{'bbox', 'colour'}} objects")
    for k, box in enumerate(boxes):
        if not isinstance(box, dict):
            raise InputError(f"{where}: boxes[{k}] must be an object with 'bbox' and 'colour'")
        bbox = box.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
                and bbox[0] < bbox[2] and bbox[1] < bbox[3]):
            raise InputError(f"{where}: boxes[{k}].bbox must be [x1, y1, x2, y2] in pixels with x1 < x2 and "
                             f"y1 < y2, got {bbox!r}")
        if box.get("colour") not in BOX_PROMPT_COLOURS:
            raise InputError(f"{where}: boxes[{k}].colour must be one of {', '.join(BOX_PROMPT_COLOURS)}, "
                             f"got {box.get('colour')!r}")
    return boxes


def check_box_prompt_field(value: Any, where: str) -> None:
    """A record's ``box_prompt``: ``{"mode": "visual"|"both", "boxes": [...]}`` (see the module docstring)."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected an object with 'mode' and 'boxes'")
    if value.get("mode") not in BOX_PROMPTS[1:]:
        raise InputError(f"{where}: mode must be one of {', '.join(BOX_PROMPTS[1:])} (a text record has no "
                         f"{BOX_PROMPT_KEY}), got {value.get('mode')!r}")
    check_drawn_boxes(value.get("boxes"), where)


def record_box_prompt(record: dict) -> tuple[str, list]:
    """``(mode, boxes to draw)`` of a (validated) record: ``("text", [])`` for a record without the field."""
    field = record.get(BOX_PROMPT_KEY)
    return ("text", []) if field is None else (field["mode"], field["boxes"])


def _convert_command(path: Path) -> str:
    out = path.with_name(f"{path.stem}_llava.json")
    return f"python vlm_training/convert_to_llava_format.py --annotation_file {path} --output_file {out}"


def annotation_file_error(path: Path) -> InputError:
    """An annotation file given where a LLaVA file is expected: the message names the conversion."""
    return InputError(f"{path}: expected a JSON list of LLaVA conversations, found an annotation file "
                      f"(data_annotation.py's output); convert it first: {_convert_command(path)}")


def _holds_annotation_images(path: Path) -> bool:
    """Whether a JSON object file has the annotation file's top-level ``images`` list (read up to its first
    record, never the whole list)."""
    try:
        for key, _ in stream_json(path, "images"):
            if key in (None, "images"):
                return True
    except InputError:
        return False
    return False


def _is_annotation_line(rec: Any) -> bool:
    """A line of an annotation file's JSONL layout: an image record, or its ``meta`` / ``skipped`` line."""
    if not isinstance(rec, dict) or "conversations" in rec:
        return False
    return "objects" in rec or (len(rec) == 1 and ("meta" in rec or "skipped" in rec))


def _foreign_record_error(path: Path, rec: Any) -> InputError | None:
    """The first record of a file of another stage (annotation, predictions) named as such, or None."""
    if _is_annotation_line(rec):
        return annotation_file_error(path)
    if isinstance(rec, dict) and "conversations" not in rec and "answer" in rec and "reference" in rec:
        return InputError(f"{path}: expected LLaVA conversations, found a predictions file (predict.py's output); "
                          "give the LLaVA file the predictions were made from (convert_to_llava_format.py writes it)")
    return None


def _raw_llava(path: Path) -> Iterator[Any]:
    if is_jsonl(path):
        for _, rec in stream_jsonl(path):
            yield rec
        return
    try:
        for key, rec in stream_json(path, None):
            if key is None:
                yield rec
    except NotAJsonList as e:
        # Checked where the reader refuses, so every stage that reads a LLaVA file says the same.
        if e.found == "{" and _holds_annotation_images(path):
            raise annotation_file_error(path) from None
        raise


def refuse_other_stage_file(path: str | os.PathLike) -> None:
    """Read a LLaVA file's first record only, so that another stage's file (an annotation file, predictions)
    is refused, naming what to run, before anything slow (a model) loads."""
    records = iter_llava_records(path, validate=False)
    try:
        next(records, None)
    finally:
        records.close()


def is_llava_file(path: str | os.PathLike) -> bool:
    """Whether a file holds LLaVA conversation records (its first record has ``conversations``); reads one
    record, and says False for anything unreadable (for messages about a file given in the wrong place)."""
    try:
        for rec in _raw_llava(Path(path)):
            return isinstance(rec, dict) and "conversations" in rec
    except InputError:
        return False
    return False


def iter_llava_records(path: str | os.PathLike, validate: bool = True) -> Iterator[dict]:
    """Stream a LLaVA file (JSON list, or JSONL by name), one validated record at a time. The file of
    another stage (an annotation file, predictions) is refused naming what it is and what to run."""
    path = Path(path)
    for i, rec in enumerate(_raw_llava(path)):
        if i == 0 and (foreign := _foreign_record_error(path, rec)) is not None:
            raise foreign
        yield validate_llava_record(rec, record_where(path, i, rec)) if validate else rec


class LlavaWriter(RecordWriter):
    """Write a LLaVA file record by record, atomically: the bytes of ``json.dumps(records,
    indent=2)`` (a JSON list, as LLaVA and LLaMA-Factory read it), or JSONL when the name ends
    in ``.jsonl``."""

    def __init__(self, path: str | os.PathLike, commit: bool = True):
        super().__init__(path, None, commit=commit)


def check_image_path(rel: str, where: str) -> str:
    """Refuse an image path that is absolute, climbs out with ``..`` or holds a NUL byte."""
    if "\x00" in rel:
        raise InputError(f"{where}: image path {rel!r} contains a NUL byte; no file can have that name")
    if os.path.isabs(rel) or Path(rel).is_absolute() or ".." in rel.replace("\\", "/").split("/"):
        raise InputError(f"{where}: image path {rel!r} escapes --image_dir (it must be relative, without '..')")
    return rel


def resolve_image_path(image_dir: Path, rel: str, where: str) -> Path:
    """``image_dir / rel`` as an absolute path; the one rule every stage applies to image paths.

    The path as written must stay inside ``image_dir`` (relative, no ``..``, no NUL byte);
    symlinks inside ``image_dir`` are followed wherever they point, as annotation followed them
    when it listed the folder. A dangling link or a missing file is "image not found".
    """
    check_image_path(rel, where)
    candidate = Path(os.path.abspath(image_dir)) / rel
    if not candidate.is_file():
        raise InputError(f"{where}: image not found: {Path(image_dir) / rel}")
    return candidate
