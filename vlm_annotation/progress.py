"""The progress sidecar of an annotation run, and the streamed writing of the result.

A run appends one flushed JSONL line per finished image to ``<output>.progress.jsonl``
(``{"image": ..., "record": {...}}`` or ``{"image": ..., "skipped": reason}``), after a
header line holding the settings that decide the results. Started again with the same
settings, the run skips the images listed there; a killed writer's partial last line is
dropped and that image redone. The final ``annotations.json`` is written from the
sidecar(s) one record at a time, sorted by image path, so neither the run nor the final
write holds more than one image's annotations in memory.

One writer per progress file: :class:`ProgressLog` takes ``<progress file>.lock``
(:func:`vlm_core.runtime.acquire_writer_lock`) before reading it and holds it until
:func:`write_from_progress` has written the output and removed the sidecars (or the process
ends), so a second run of the same command refuses with one line naming the first. Shards
and torchrun ranks each lock their own sidecar and never block each other. Every line is
read for what it is (a header, a record), never for where it is.

A run that finds no sidecar but a finished output written with the same settings takes that
output's records as done (its skipped files are tried again): rerunning a finished command
writes the same file without redoing the work, and a folder that has grown is annotated only
for its new images (single-process runs; under torchrun a rerun annotates again, to the same file).
"""
from __future__ import annotations

import atexit
import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from vlm_core.images import printable_name
from vlm_core.io_utils import InputError, JsonlAppender, parse_line
from vlm_core.runtime import acquire_writer_lock, release_writer_lock, remove_stale_temps
from vlm_core.schema import AnnotationError, AnnotationWriter, validate_annotations, validate_image_record

_PROGRESS_NAME = re.compile(r"(?P<output>.+)\.progress(?:\.\d+-of-\d+)*\.jsonl")


def progress_path(output_file: str | Path, shard: int = 0, num_shards: int = 1, rank: int = 0,
                  world: int = 1) -> Path:
    """``<output>.progress.jsonl``; with shards / processes ``<output>.progress.1-of-2.0-of-4.jsonl``."""
    out = Path(output_file)
    parts = "".join(f".{i}-of-{n}" for i, n in ((shard, num_shards), (rank, world)) if n > 1)
    return out.with_name(f"{out.name}.progress{parts}.jsonl")


def output_of(progress_file: str | Path) -> Path | None:
    """The annotation file a :func:`progress_path` belongs to (None for another name)."""
    path = Path(progress_file)
    match = _PROGRESS_NAME.fullmatch(path.name)
    return path.with_name(match["output"]) if match else None


# Progress files whose lock this process holds: {absolute path: lock descriptor}.
_HELD: dict[Path, int] = {}


def _lock(path: Path) -> None:
    key = path.absolute()
    if key in _HELD:  # an earlier run in this process (a test, a notebook) that never reached its end
        _unlock(key)
    output = output_of(path)
    _HELD[key] = acquire_writer_lock(path, "--output_file", name=output if output is not None else path)


def _unlock(path: Path) -> None:
    key = Path(path).absolute()
    fd = _HELD.pop(key, None)
    if fd is not None:
        release_writer_lock(key, fd)


@atexit.register
def _unlock_all() -> None:
    # The kernel releases the locks anyway; this removes the lock files of a normal exit.
    for key in list(_HELD):
        _unlock(key)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) of every complete line; a partial last line is left out.

    A last line without its newline that is complete JSON counts, as JsonlAppender keeps it.
    """
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                try:
                    parse_line(line, path)
                except InputError:
                    return
            yield offset, line
            offset += len(line)


def _entries(path: Path) -> Iterator[tuple[int, int, dict]]:
    """(line number, byte offset, entry) of every complete line, each checked for what it is."""
    for i, (offset, line) in enumerate(_lines(path), start=1):
        try:
            rec = parse_line(line, path, i)  # strict: NaN, absurd nesting, bad syntax -> one line
        except InputError as e:
            raise InputError(f"{e}; delete the file or pass --restart") from None
        is_header = isinstance(rec, dict) and set(rec) == {"header"}
        is_entry = isinstance(rec, dict) and isinstance(rec.get("image"), str) and (
            isinstance(rec.get("record"), dict) or isinstance(rec.get("skipped"), str))
        if not (is_header or is_entry):
            raise InputError(f"{path}: line {i}: not a line of a progress file of this tool; "
                             "delete the file or pass --restart")
        yield i, offset, rec


def _describe_change(old: dict, new: dict) -> str:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in changed[:3])


class _Names(set):
    """Image names, compared by :func:`printable_name` (undecodable names are stored escaped)."""

    def __contains__(self, name) -> bool:
        return super().__contains__(printable_name(name) if isinstance(name, str) else name)


class ProgressLog:
    """Read what a previous run finished, then append what this run finishes.

    Constructing one takes the progress file's lock (:class:`~vlm_core.runtime.OutputBusy`,
    an :class:`InputError`, while another live run holds it); :meth:`close` keeps it, so the
    final write happens under it too; :func:`write_from_progress` releases it.
    """

    def __init__(self, path: Path, settings: dict, restart: bool = False):
        self.path = Path(path)
        self.settings = settings
        self.done: set[str] = _Names()
        self._writer = None
        self._reuse: Path | None = None
        _lock(self.path)
        try:
            if restart:
                self.path.unlink(missing_ok=True)
            has_lines = self.path.is_file() and any(True for _ in _lines(self.path))
            if has_lines:
                self._read_existing()
            elif not restart:
                self._reuse = self._finished_output()
        except BaseException:
            _unlock(self.path)
            raise

    def open(self) -> "ProgressLog":
        """Start appending (nothing is written before: a run refused at start leaves no file)."""
        self._writer = JsonlAppender(self.path)  # drops a killed writer's partial last line
        if self.path.stat().st_size == 0:
            self._writer.write({"header": self.settings})
            if self._reuse is not None:
                for rec in _finished_records(self._reuse):
                    self._writer.write({"image": rec["image"], "record": rec})
        return self

    def _read_existing(self) -> None:
        headers = 0
        for i, _, rec in _entries(self.path):
            if "header" in rec:
                if rec["header"] != self.settings:
                    raise InputError(f"{self.path}: left by a run with other settings "
                                     f"({_describe_change(rec['header'], self.settings)}); "
                                     "run with those settings to resume, or pass --restart")
                headers += 1
            elif not headers:
                # Records of unknown settings (an older version's two-runs bug left such files).
                raise InputError(f"{self.path}: line {i}: a record before any header line, so the settings "
                                 "it was made with are unknown; delete the file or pass --restart")
            else:
                self.done.add(rec["image"])

    def _finished_output(self) -> Path | None:
        """The finished output of an earlier run with these settings, whose records count as done."""
        output = output_of(self.path)
        if output is None or not output.is_file() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Under torchrun every rank would copy every record: a rerun there redoes the work.
            return None
        found = _finished_meta(output)
        if found is None or {k: found.get(k) for k in self.settings} != self.settings:
            return None
        try:
            names = [rec["image"] for rec in _finished_records(output)]
        except (OSError, InputError):  # not a file this tool wrote: nothing is taken from it
            return None
        self.done.update(names)
        return output

    def add_image(self, record: dict) -> None:
        if printable_name(record["image"]) != record["image"]:
            self.add_skipped(record["image"], "file name is not valid UTF-8; rename the file")
            return
        self._writer.write({"image": record["image"], "record": record})
        self.done.add(record["image"])

    def add_skipped(self, image: str, reason: str) -> None:
        # An undecodable name (lone surrogates) cannot go into a UTF-8 file: it is kept escaped.
        image = printable_name(image)
        self._writer.write({"image": image, "skipped": printable_name(reason)})
        self.done.add(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _finished_meta(output: Path) -> dict | None:
    """The ``meta`` of an annotation file laid out as :func:`write_annotations_stream` writes it
    (read without loading the images), or None for any other file."""
    try:
        with open(output, "rb") as f:
            if f.readline() != b"{\n" or not f.readline().startswith(b'"images": ['):
                return None
            for line in f:
                if line.startswith(b'"meta": '):
                    text = line[len(b'"meta": '):] + f.read()
                    if not text.endswith(b"\n}\n"):
                        return None
                    meta = parse_line(text[:-len(b"\n}\n")], output)
                    return meta if isinstance(meta, dict) else None
    except (OSError, InputError):
        return None
    return None


def _finished_records(output: Path) -> Iterator[dict]:
    """The image records of an annotation file written by :func:`write_annotations_stream`."""
    with open(output, "rb") as f:
        f.readline()
        if f.readline() != b'"images": [\n':
            return
        for line in f:
            if line == b"],\n":
                return
            rec = parse_line(line.rstrip(b"\n").removesuffix(b","), output)
            if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
                raise InputError(f"{output}: not an image record: {line[:80]!r}")
            yield rec


def _index(paths: Iterable[Path], only: set[str] | None = None) -> tuple[list[tuple[str, int, int]], list[dict]]:
    """Where each finished image's record is: (image, file number, offset); and the skipped list.

    ``only``: the images of this run (an earlier run of the same settings may have had more).
    """
    records: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    if only is not None:
        only = {printable_name(name) for name in only}
    for n, path in enumerate(paths):
        for _, offset, rec in _entries(path):
            if "header" in rec:
                continue
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
            yield parse_line(handles[n].readline(), paths[n])["record"]
    finally:
        for h in handles:
            h.close()


def write_annotations_stream(path: str | Path, records: Iterable[dict], skipped: list[dict], meta: dict) -> dict:
    """Write an annotation file a record at a time (validated, atomic); return counts.

    One image record per line inside ``"images"``, so the file is greppable and a reader
    sees the usual JSON object (a ``.jsonl`` name gets the JSONL layout of the schema instead).
    """
    path = Path(path)
    validate_annotations({"images": [], "skipped": skipped, "meta": meta}, path)
    counts = {"images": 0, "objects": 0, "qa": 0, "skipped": len(skipped)}
    seen: set[str] = set()
    with AnnotationWriter(path, style="lines") as writer:  # strict JSON: NaN is refused, not written
        for i, rec in enumerate(records):
            validate_image_record(rec, path, f"images[{i}]")
            if rec["image"] in seen:
                raise AnnotationError(path, f"images[{i}].image", f"{rec['image']!r} listed twice")
            seen.add(rec["image"])
            writer.write(rec)
            counts["images"] += 1
            counts["objects"] += len(rec["objects"])
            counts["qa"] += len(rec.get("qa", []))
        writer.finish(skipped, meta)
    return counts


def write_from_progress(output_file: str | Path, progress_files: list[Path], meta: dict,
                        only: set[str] | None = None) -> dict:
    """Merge the finished records of one or more sidecars into the annotation file, then remove
    the sidecars and release this process's locks on them.

    Runs under the sidecar's lock, so temp files a killed final write left are removed first.
    """
    progress_files = [Path(p) for p in progress_files]
    index, skipped = _index(progress_files, only)
    remove_stale_temps(output_file)
    counts = write_annotations_stream(output_file, _iter_records(progress_files, index), skipped, meta)
    for part in progress_files:
        part.unlink(missing_ok=True)
    for part in progress_files:
        _unlock(part)
    return counts
