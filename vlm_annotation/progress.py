"""The progress sidecar of an annotation run, and the streamed writing of the result.

A run appends one flushed JSONL line per finished image to ``<output>.progress.jsonl``
(``{"image": ..., "record": {...}}`` or ``{"image": ..., "skipped": reason}``), after a
header line holding the settings that decide the results. Started again with the same
settings, the run skips the images listed there; a killed writer's partial last line is
dropped and that image redone. The final ``annotations.json`` is written from the
sidecar(s) one record at a time, sorted by image path, so neither the run nor the final
write holds more than one image's annotations in memory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from vlm_annotation.io_utils import InputError, JsonlAppender, atomic_output
from vlm_annotation.schema import AnnotationError, validate_annotations, validate_image_record


def progress_path(output_file: str | Path, shard: int = 0, num_shards: int = 1, rank: int = 0,
                  world: int = 1) -> Path:
    """``<output>.progress.jsonl``; with shards / processes ``<output>.progress.1-of-2.0-of-4.jsonl``."""
    out = Path(output_file)
    parts = "".join(f".{i}-of-{n}" for i, n in ((shard, num_shards), (rank, world)) if n > 1)
    return out.with_name(f"{out.name}.progress{parts}.jsonl")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) of every complete line; a partial last line is left out."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            yield offset, line
            offset += len(line)


def _describe_change(old: dict, new: dict) -> str:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in changed[:3])


class ProgressLog:
    """Read what a previous run finished, then append what this run finishes."""

    def __init__(self, path: Path, settings: dict, restart: bool = False):
        self.path = Path(path)
        self.settings = settings
        self.done: set[str] = set()
        if restart:
            self.path.unlink(missing_ok=True)
        self._existing = self.path.is_file() and any(True for _ in _lines(self.path))
        if self._existing:
            self._read_existing()
        self._writer = None

    def open(self) -> "ProgressLog":
        """Start appending (nothing is written before: a run refused at start leaves no file)."""
        self._writer = JsonlAppender(self.path)  # drops a killed writer's partial last line
        if not self._existing:
            self._writer.write({"header": self.settings})
            self._existing = True
        return self

    def _read_existing(self) -> None:
        for i, (_, line) in enumerate(_lines(self.path)):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{self.path}: line {i + 1}: invalid JSON; delete the file or pass --restart") \
                    from None
            if i == 0:
                header = rec.get("header") if isinstance(rec, dict) else None
                if header is None:
                    raise InputError(f"{self.path}: not a progress file of this tool; delete it or pass --restart")
                if header != self.settings:
                    raise InputError(f"{self.path}: left by a run with other settings "
                                     f"({_describe_change(header, self.settings)}); "
                                     "run with those settings to resume, or pass --restart")
                continue
            self.done.add(rec["image"])

    def add_image(self, record: dict) -> None:
        self._writer.write({"image": record["image"], "record": record})
        self.done.add(record["image"])

    def add_skipped(self, image: str, reason: str) -> None:
        self._writer.write({"image": image, "skipped": reason})
        self.done.add(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _index(paths: Iterable[Path], only: set[str] | None = None) -> tuple[list[tuple[str, int, int]], list[dict]]:
    """Where each finished image's record is: (image, file number, offset); and the skipped list.

    ``only``: the images of this run (an earlier run of the same settings may have had more).
    """
    records: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    for n, path in enumerate(paths):
        for i, (offset, line) in enumerate(_lines(path)):
            if i == 0:
                continue
            rec = json.loads(line)
            if only is not None and rec["image"] not in only:
                continue
            if "record" in rec:
                records[rec["image"]] = (n, offset)
                skipped.pop(rec["image"], None)
            else:
                skipped[rec["image"]] = rec["skipped"]
                records.pop(rec["image"], None)
    ordered = [(image, n, off) for image, (n, off) in sorted(records.items())]
    return ordered, [{"image": k, "reason": skipped[k]} for k in sorted(skipped)]


def _iter_records(paths: list[Path], index: list[tuple[str, int, int]]) -> Iterator[dict]:
    handles = [open(p, "rb") for p in paths]
    try:
        for _, n, offset in index:
            handles[n].seek(offset)
            yield json.loads(handles[n].readline())["record"]
    finally:
        for h in handles:
            h.close()


def write_annotations_stream(path: str | Path, records: Iterable[dict], skipped: list[dict], meta: dict) -> dict:
    """Write an annotation file a record at a time (validated, atomic); return counts.

    One image record per line inside ``"images"``, so the file is greppable and a reader
    sees the usual JSON object.
    """
    path = Path(path)
    validate_annotations({"images": [], "skipped": skipped, "meta": meta}, path)
    counts = {"images": 0, "objects": 0, "qa": 0, "skipped": len(skipped)}
    seen: set[str] = set()
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{\n"images": [')
        for i, rec in enumerate(records):
            validate_image_record(rec, path, f"images[{i}]")
            if rec["image"] in seen:
                raise AnnotationError(path, f"images[{i}].image", f"{rec['image']!r} listed twice")
            seen.add(rec["image"])
            f.write(("\n" if i == 0 else ",\n") + json.dumps(rec, ensure_ascii=False))
            counts["images"] += 1
            counts["objects"] += len(rec["objects"])
            counts["qa"] += len(rec.get("qa", []))
        f.write("\n],\n" if counts["images"] else "],\n")
        f.write('"skipped": ' + json.dumps(skipped, ensure_ascii=False) + ",\n")
        f.write('"meta": ' + json.dumps(meta, ensure_ascii=False, indent=1) + "\n}\n")
    return counts


def write_from_progress(output_file: str | Path, progress_files: list[Path], meta: dict,
                        only: set[str] | None = None) -> dict:
    """Merge the finished records of one or more sidecars into the annotation file."""
    index, skipped = _index(progress_files, only)
    return write_annotations_stream(output_file, _iter_records(progress_files, index), skipped, meta)
