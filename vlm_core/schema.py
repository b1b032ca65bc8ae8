"""The annotation file contract, checked in one place by every stage that reads one.

An annotation file (``annotations.json`` and the split files) is a JSON object::

    {"images": [{"image": "sub/a.jpg", "width": 640, "height": 480, "caption": "...",
                 "objects": [{"id": 0, "label": "glass", "bbox": [x1, y1, x2, y2],
                              "score": 0.91, "sources": ["yolo", "rtdetr"],
                              "description": "Here is a glass. ..."}],
                 "qa": [{"question": "...", "answer": "...", "type": "count",
                         "object_ids": []}]}],
     "skipped": [{"image": "broken.jpg", "reason": "..."}],
     "meta": {...}}

An object may also hold ``label_candidates``: the runner-up labels of an object the detectors disagreed
on (merged across classes), best first, each ``{"label": "can", "score": 0.31}``.

Boxes are pixels of the displayed image (after EXIF rotation). A Q&A pair's text never holds box
numbers: it names an object's box by a placeholder, ``<box:ID>`` with ID the object's ``id`` in
that image ("Please provide a short description for this region: <box:3>"; a grounding answer is
"<box:3>"). Conversion renders each placeholder once, in the box frame of the model family the data
is for (:func:`render_placeholders`), so one annotation file serves every family.
:func:`validate_annotations` reports the first bad field by its path, e.g. ``images[12].objects[3].bbox``
or ``images[4].qa[7].question`` for a placeholder naming an object the image does not have.

The same content may be a JSONL file (any name ending in ``.jsonl``): one image record per
line, then ``{"skipped": [...]}`` and ``{"meta": {...}}`` on lines of their own (readers accept
those two lines anywhere). :class:`AnnotationReader` streams either layout a validated record at
a time; :class:`AnnotationWriter` writes either, record by record.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from array import array
from pathlib import Path
from typing import Any, Callable, Iterator

from vlm_core.io_utils import STREAMED, InputError, RecordWriter, is_jsonl, stream_json, stream_jsonl

QA_TYPES = (
    "count", "count_class", "exists", "location",
    "region_description", "region_label", "grounding", "relation", "surface",
)
# The groups of QA_TYPES that are answered and scored differently, defined here once. Every type not in
# one of them (exists, location, surface, ...) is a short answer, scored by exact match.
COUNT_TYPES = ("count", "count_class")                 # short answers that also get count_exact / count_mae
GROUNDING_TYPES = ("grounding",)                       # the answer is a box
DESCRIPTION_TYPES = ("region_description",)            # free text, scored with caption metrics
REGION_QUESTION_TYPES = ("region_description", "region_label")  # the question names one object by its box
# Box coordinates may exceed the image by rounding only.
_BOX_TOLERANCE = 1.0
# No real image is wider or taller; larger values are corrupt data (and would make boxes vanish
# to zero area once normalized).
MAX_IMAGE_SIDE = 1_000_000


# A box in Q&A text: the placeholder of the object whose box it is (see the module docstring).
BOX_PLACEHOLDER = "<box:{id}>"
_PLACEHOLDER_START = "<box:"
_PLACEHOLDER = re.compile(r"<box:(\d+)>")


def box_placeholder(object_id: int) -> str:
    """``<box:3>``: how Q&A text names the box of the object with id 3."""
    return BOX_PLACEHOLDER.format(id=object_id)


def placeholder_ids(text: str) -> list[int]:
    """The object ids the placeholders of ``text`` name, in order."""
    if _PLACEHOLDER_START not in text:
        return []
    return [int(m) for m in _PLACEHOLDER.findall(text)]


def render_placeholders(text: str, render_box_of_id: Callable[[int], str]) -> str:
    """``text`` with each ``<box:ID>`` replaced by ``render_box_of_id(ID)`` (the box as a model family writes it)."""
    if _PLACEHOLDER_START not in text:  # the common case: no box
        return text
    return _PLACEHOLDER.sub(lambda m: render_box_of_id(int(m.group(1))), text)


class AnnotationError(InputError):
    """A field of an annotation file is malformed; the message names file and field path."""

    def __init__(self, file: str | os.PathLike | None, field: str, problem: str):
        self.file, self.field, self.problem = file, field, problem
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{field}: {problem}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_str(value: Any, file, field: str, nonempty: bool = False) -> None:
    if not isinstance(value, str):
        raise AnnotationError(file, field, f"expected a string, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise AnnotationError(file, field, "must not be empty")


def _require(record: dict, key: str, file, path: str) -> Any:
    if key not in record:
        raise AnnotationError(file, f"{path}.{key}", "missing")
    return record[key]


def validate_bbox(bbox: Any, width: float, height: float, file, field: str) -> None:
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise AnnotationError(file, field, "expected [x1, y1, x2, y2], a list of 4 numbers")
    if not all(_is_number(v) for v in bbox):
        raise AnnotationError(file, field, "coordinates must be finite numbers")
    x1, y1, x2, y2 = bbox
    if not (x2 > x1 and y2 > y1):
        raise AnnotationError(file, field, f"needs x1 < x2 and y1 < y2, got {bbox}")
    t = _BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise AnnotationError(file, field, f"{bbox} lies outside the {width}x{height} image")


_NUMBER_TYPES = (int, float)
_QA_TYPE_SET = frozenset(QA_TYPES)


def _object_is_valid(obj: dict, width, height) -> bool:
    """Every check of :func:`_validate_object` in one expression (the common case: all pass).

    Exact types are enough here: JSON gives no subclasses, and anything else takes the slow
    path, which decides and names the field. NaN and infinities fail the comparisons.
    """
    oid, label, bbox, score = obj.get("id"), obj.get("label"), obj.get("bbox"), obj.get("score")
    sources, description = obj.get("sources"), obj.get("description", "")
    if not (type(oid) is int and oid >= 0 and type(label) is str and label.strip()
            and type(score) in _NUMBER_TYPES and 0.0 <= score <= 1.0 and type(description) is str
            and type(sources) is list and all(type(x) is str and x for x in sources)
            and type(bbox) is list and len(bbox) == 4 and all(type(v) in _NUMBER_TYPES for v in bbox)
            and ("label_candidates" not in obj or _candidates_are_valid(obj["label_candidates"]))):
        return False
    x1, y1, x2, y2 = bbox
    t = _BOX_TOLERANCE
    return x2 > x1 and y2 > y1 and x1 >= -t and y1 >= -t and x2 <= width + t and y2 <= height + t


def _candidates_are_valid(candidates) -> bool:
    return type(candidates) is list and all(
        type(c) is dict and type(c.get("label")) is str and c["label"].strip()
        and type(c.get("score")) in _NUMBER_TYPES and 0.0 <= c["score"] <= 1.0 for c in candidates)


def _validate_candidates(candidates: Any, file, path: str) -> None:
    """``label_candidates`` (optional): the runner-up labels of an object merged across classes, best first."""
    if not isinstance(candidates, list):
        raise AnnotationError(file, path, "expected a list of {label, score}")
    for j, c in enumerate(candidates):
        if not isinstance(c, dict):
            raise AnnotationError(file, f"{path}[{j}]", "expected {label, score}")
        _check_str(_require(c, "label", file, f"{path}[{j}]"), file, f"{path}[{j}].label", nonempty=True)
        score = _require(c, "score", file, f"{path}[{j}]")
        if not _is_number(score) or not 0.0 <= score <= 1.0:
            raise AnnotationError(file, f"{path}[{j}].score", "expected a number in [0, 1]")


def _validate_object(obj: Any, width, height, file, path: str) -> int:
    if type(obj) is dict and _object_is_valid(obj, width, height):
        return obj["id"]
    if not isinstance(obj, dict):
        raise AnnotationError(file, path, "expected an object")
    oid = _require(obj, "id", file, path)
    if not _is_int(oid) or oid < 0:
        raise AnnotationError(file, f"{path}.id", "expected a non-negative integer")
    _check_str(_require(obj, "label", file, path), file, f"{path}.label", nonempty=True)
    validate_bbox(_require(obj, "bbox", file, path), width, height, file, f"{path}.bbox")
    score = _require(obj, "score", file, path)
    if not _is_number(score) or not 0.0 <= score <= 1.0:
        raise AnnotationError(file, f"{path}.score", "expected a number in [0, 1]")
    sources = _require(obj, "sources", file, path)
    if not isinstance(sources, list) or not all(isinstance(s, str) and s for s in sources):
        raise AnnotationError(file, f"{path}.sources", "expected a list of detector names")
    _check_str(obj.get("description", ""), file, f"{path}.description")
    if "label_candidates" in obj:
        _validate_candidates(obj["label_candidates"], file, f"{path}.label_candidates")
    return oid


def _placeholders_ok(text: str, object_ids: set[int]) -> bool:
    """Every ``<box:`` in ``text`` starts a placeholder that names an object of the image."""
    if _PLACEHOLDER_START not in text:
        return True
    ids = placeholder_ids(text)
    return len(ids) == text.count(_PLACEHOLDER_START) and all(i in object_ids for i in ids)


def _check_placeholders(text: str, object_ids: set[int], file, field: str) -> None:
    if _placeholders_ok(text, object_ids):
        return
    for i in placeholder_ids(text):
        if i not in object_ids:
            have = ", ".join(str(k) for k in sorted(object_ids)) or "none"
            raise AnnotationError(file, field, f"{box_placeholder(i)} names no object of this image "
                                               f"(its object ids: {have})")
    raise AnnotationError(file, field, f"{_PLACEHOLDER_START!r} that is not a box placeholder "
                                       f"{BOX_PLACEHOLDER.format(id='ID')} (ID: an object id of this image)")


def _validate_qa(qa: Any, object_ids: set[int], file, path: str) -> None:
    if type(qa) is dict:  # the common case, every check in one expression; else the slow path names the field
        q, a, t, ids = qa.get("question"), qa.get("answer"), qa.get("type"), qa.get("object_ids", [])
        if (type(q) is str and type(a) is str and type(t) is str and t in _QA_TYPE_SET and type(ids) is list
                and q.strip() and a.strip() and all(type(i) is int and i in object_ids for i in ids)
                and _placeholders_ok(q, object_ids) and _placeholders_ok(a, object_ids)):
            return
    if not isinstance(qa, dict):
        raise AnnotationError(file, path, "expected an object")
    _check_str(_require(qa, "question", file, path), file, f"{path}.question", nonempty=True)
    _check_str(_require(qa, "answer", file, path), file, f"{path}.answer", nonempty=True)
    for field in ("question", "answer"):
        _check_placeholders(qa[field], object_ids, file, f"{path}.{field}")
    qtype = _require(qa, "type", file, path)
    if qtype not in QA_TYPES:
        raise AnnotationError(file, f"{path}.type", f"{qtype!r} is not one of {', '.join(QA_TYPES)}")
    ids = qa.get("object_ids", [])
    if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
        raise AnnotationError(file, f"{path}.object_ids", "expected a list of object ids")
    for j, i in enumerate(ids):
        if i not in object_ids:
            raise AnnotationError(file, f"{path}.object_ids[{j}]", f"no object with id {i} in this image")


def validate_image_record(rec: Any, file, path: str) -> None:
    if not isinstance(rec, dict):
        raise AnnotationError(file, path, "expected an object")
    _check_str(_require(rec, "image", file, path), file, f"{path}.image", nonempty=True)
    if "\x00" in rec["image"]:
        raise AnnotationError(file, f"{path}.image", "contains a NUL byte; no file can have that name")
    if os.path.isabs(rec["image"]) or ".." in rec["image"].replace("\\", "/").split("/"):
        raise AnnotationError(file, f"{path}.image", "must be a path relative to the images dir")
    width, height = _require(rec, "width", file, path), _require(rec, "height", file, path)
    for key, v in (("width", width), ("height", height)):
        if not _is_int(v) or not 0 < v <= MAX_IMAGE_SIDE:
            raise AnnotationError(file, f"{path}.{key}", f"expected a positive integer up to {MAX_IMAGE_SIDE}")
    _check_str(rec.get("caption", ""), file, f"{path}.caption")
    objects = _require(rec, "objects", file, path)
    if not isinstance(objects, list):
        raise AnnotationError(file, f"{path}.objects", "expected a list")
    ids: set[int] = set()
    for k, obj in enumerate(objects):
        oid = _validate_object(obj, width, height, file, f"{path}.objects[{k}]")
        if oid in ids:
            raise AnnotationError(file, f"{path}.objects[{k}].id", f"duplicate id {oid}")
        ids.add(oid)
    qas = rec.get("qa", [])
    if not isinstance(qas, list):
        raise AnnotationError(file, f"{path}.qa", "expected a list")
    for k, qa in enumerate(qas):
        _validate_qa(qa, ids, file, f"{path}.qa[{k}]")


def validate_annotations(data: Any, file: str | os.PathLike | None = None) -> dict:
    """Check a loaded annotation file; return it, or raise :class:`AnnotationError`."""
    if not isinstance(data, dict):
        raise AnnotationError(file, "(top level)", "expected a JSON object with 'images'")
    images = data.get("images")
    if images is None:
        raise AnnotationError(file, "images", "missing")
    if not isinstance(images, list):
        raise AnnotationError(file, "images", "expected a list")
    seen: dict[str, int] = {}
    for i, rec in enumerate(images):
        validate_image_record(rec, file, f"images[{i}]")
        if rec["image"] in seen:
            raise AnnotationError(file, f"images[{i}].image",
                                  f"{rec['image']!r} already listed at images[{seen[rec['image']]}]")
        seen[rec["image"]] = i
    validate_skipped(data.get("skipped", []), file)
    validate_meta(data.get("meta", {}), file)
    return data


def validate_skipped(skipped: Any, file) -> list:
    if not isinstance(skipped, list):
        raise AnnotationError(file, "skipped", "expected a list")
    for i, s in enumerate(skipped):
        if not isinstance(s, dict):
            raise AnnotationError(file, f"skipped[{i}]", "expected an object")
        _check_str(_require(s, "image", file, f"skipped[{i}]"), file, f"skipped[{i}].image")
        _check_str(_require(s, "reason", file, f"skipped[{i}]"), file, f"skipped[{i}].reason")
    return skipped


def validate_meta(meta: Any, file) -> dict:
    if not isinstance(meta, dict):
        raise AnnotationError(file, "meta", "expected an object")
    return meta


def path_digest(image: str, size: int = 16) -> bytes:
    """A short hash of an image path (16 bytes: distinct paths never collide in practice)."""
    return hashlib.blake2b(image.encode("utf-8", "surrogatepass"), digest_size=size).digest()


def _path_key(image: str) -> int:
    return int.from_bytes(path_digest(image, 8), "little")


def _first_duplicate(path: Path, keys: array) -> tuple[int, int, str] | None:
    """``(i, j, image)`` of the first path listed twice (smallest later index j, as a reader in
    file order meets it), or None. ``keys``: 64-bit path hashes, 8 bytes an image, sorted here
    in place; equal hashes are rare and only their paths are then compared, in a second read."""
    import numpy as np
    if len(keys) < 2:
        return None
    ranked = np.frombuffer(keys, dtype=np.uint64)
    ranked.sort()
    same = ranked[1:] == ranked[:-1]
    if not same.any():
        return None
    suspects = {int(v) for v in ranked[1:][same]}
    first: dict[str, int] = {}
    for k, rec in enumerate(AnnotationReader(path, validate=False)):
        if _path_key(rec["image"]) in suspects:
            if rec["image"] in first:
                return first[rec["image"]], k, rec["image"]
            first[rec["image"]] = k
    return None


class AnnotationReader:
    """Stream an annotation file (JSON layout or JSONL) one validated image record at a time.

    ::

        reader = AnnotationReader("annotations.json")
        for rec in reader:              # images[i], each validated once; errors name the field
            ...
        reader.meta, reader.skipped, reader.count   # complete once the loop has ended

    Memory holds one record (plus 8 bytes an image to refuse a path listed twice, which is
    reported when the loop ends). ``validate=False`` reads a file already checked in this run.
    """

    def __init__(self, path: str | os.PathLike, validate: bool = True):
        self.path = Path(path)
        self.validate = validate
        self.meta: dict = {}
        self.skipped: list = []
        self.count = 0

    def _raw(self) -> Iterator[tuple[str | None, Any]]:
        if is_jsonl(self.path):
            for _, value in stream_jsonl(self.path):
                if isinstance(value, dict) and len(value) == 1 and ("meta" in value or "skipped" in value):
                    yield next(iter(value.items()))
                else:
                    yield None, value
            yield "images", STREAMED  # the lines are the list
        else:
            yield from stream_json(self.path, "images")

    def __iter__(self) -> Iterator[dict]:
        self.meta, self.skipped, self.count = {}, [], 0
        keys = array("Q")
        seen_images = False
        for key, value in self._raw():
            if key is None:
                if self.validate:
                    validate_image_record(value, self.path, f"images[{self.count}]")
                    keys.append(_path_key(value["image"]))
                self.count += 1
                yield value
            elif key == "images":
                seen_images = True
                if value is not STREAMED:  # a list would have been streamed
                    raise AnnotationError(self.path, "images", "expected a list")
            elif key == "skipped":
                self.skipped = validate_skipped(value, self.path)
            elif key == "meta":
                self.meta = validate_meta(value, self.path)
        if not seen_images:
            raise AnnotationError(self.path, "images", "missing")
        dup = _first_duplicate(self.path, keys) if self.validate else None
        if dup is not None:
            i, j, image = dup
            raise AnnotationError(self.path, f"images[{j}].image", f"{image!r} already listed at images[{i}]")


def load_annotations(path: str | os.PathLike) -> dict:
    """Read and validate a whole annotation file into memory (small files; big ones: :class:`AnnotationReader`)."""
    reader = AnnotationReader(path)
    images = list(reader)
    return {"images": images, "skipped": reader.skipped, "meta": reader.meta}


class AnnotationWriter(RecordWriter):
    """Write an annotation file record by record, atomically; JSONL when the name ends in ``.jsonl``.

    ``style="indent"``: the bytes of ``json.dumps(data, indent=2)`` (split files);
    ``style="lines"``: one image record per line (what an annotation run and merge write).
    Records are written as given (validate them where they are read); :meth:`finish` writes
    ``skipped`` and ``meta`` and commits.
    """

    def __init__(self, path: str | os.PathLike, style: str = "indent", commit: bool = True):
        super().__init__(path, "images", None if is_jsonl(path) else style, tail_indent={"meta": 1}, commit=commit)

    def finish(self, skipped: list, meta: dict) -> None:
        validate_skipped(skipped, self.path)
        validate_meta(meta, self.path)
        self.close({"skipped": skipped, "meta": meta})


# ----------------------------------------------------------------------------- split files

def pending_marker(path: str | os.PathLike) -> Path:
    """The marker that stands beside a split file while the three files are being replaced."""
    p = Path(path)
    return p.with_name(f".{p.name}.split-pending")


def check_not_pending(path: str | os.PathLike, flag: str) -> None:
    """Refuse a split file whose split run was killed while replacing the three files."""
    if pending_marker(path).exists():
        raise InputError(f"{flag}: {path} comes from a split_data.py run that was interrupted while it "
                         "replaced the split files (train/val/test may mix two splits); run the same "
                         "split_data.py command again")
