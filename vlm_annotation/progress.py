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

What makes an output "the same work": the settings the engine compares (every flag that changes a
record, the images folder resolved, each model file's identity: path, size and mtime) and, with
``--num_shards``, the shard. The output itself is guarded too (:func:`claim_output`, before any work):

* one writer per output: rank 0 takes ``<output>.lock``, so two runs (two shards given one
  ``--output_file`` included) never write the same file at once;
* shards must name their outputs apart: a run refuses an output (or a progress file of it) that belongs
  to another shard, or to an unsharded run, and says so (``--restart`` does not override this);
* an edited output is never discarded: the file records a digest of its records
  (``meta.records_digest``, :class:`RecordsDigest`); a file whose records no longer match it (a label
  fixed by hand, whatever the layout it was saved in) or that this tool did not write is refused with
  one line until it is moved away or ``--restart`` is given. An output that is only reformatted still
  counts as finished.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from vlm_core.images import printable_name
from vlm_core.io_utils import InputError, JsonlAppender, parse_line
from vlm_core.runtime import OutputBusy, acquire_writer_lock, release_writer_lock, remove_stale_temps
from vlm_core.schema import (
    AnnotationError,
    AnnotationReader,
    AnnotationWriter,
    validate_annotations,
    validate_image_record,
)

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


def _lock(path: Path, flag: str = "--output_file") -> None:
    key = path.absolute()
    if key in _HELD:  # an earlier run in this process (a test, a notebook) that never reached its end
        _unlock(key)
    output = output_of(path)
    _HELD[key] = acquire_writer_lock(path, flag, name=output if output is not None else path)


def _unlock(path: Path) -> None:
    key = Path(path).absolute()
    fd = _HELD.pop(key, None)
    if fd is not None:
        release_writer_lock(key, fd)


def release_locks(*paths: str | Path) -> None:
    """Release this process's locks on these outputs / progress files (a run that stops early, in a process
    that goes on: a test, a notebook)."""
    for path in paths:
        _unlock(Path(path))


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
        if output is None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Under torchrun every rank would copy every record: a rerun there redoes the work.
            return None
        state, meta = inspect_output(output)
        if state != "finished" or {k: meta.get(k) for k in self.settings} != self.settings:
            return None
        self.done.update(rec["image"] for rec in _finished_records(output))
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


DIGEST_KEY = "records_digest"  # the meta field that says what the run wrote (an edit changes the records)


def _canonical(value) -> bytes:
    # Key order and spacing left out: a file loaded and saved again (json.dump(indent=2)) keeps its digest.
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8", "surrogatepass")


class RecordsDigest:
    """A digest of an annotation file's records and skipped list, independent of its layout."""

    def __init__(self):
        self._hash = hashlib.sha256()

    def add(self, record: dict) -> None:
        self._hash.update(_canonical(record) + b"\n")

    def finish(self, skipped: list) -> str:
        final = self._hash.copy()
        final.update(b"skipped:" + _canonical(skipped))
        return final.hexdigest()[:32]


# inspect_output's answers, by the file's identity: a run reads its output once, not per caller.
_INSPECTED: dict[tuple, tuple[str, dict | None]] = {}


def inspect_output(output: Path) -> tuple[str, dict | None]:
    """What is at an annotation run's output path, and its meta: ``"missing"``; ``"foreign"`` (not an
    annotation file, or one without :data:`DIGEST_KEY`: written by hand, another tool or an older version);
    ``"edited"`` (its records differ from those the run wrote); ``"finished"`` (as the run wrote it,
    reformatted or not). Reads the whole file, a record at a time."""
    try:
        st = os.stat(output)
    except FileNotFoundError:
        return "missing", None
    except OSError:
        return "foreign", None
    key = (str(Path(output).absolute()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _INSPECTED:
        _INSPECTED.clear()
        digest = RecordsDigest()
        try:
            reader = AnnotationReader(output)
            for rec in reader:
                digest.add(rec)
        except (OSError, InputError, RecursionError, UnicodeError):
            _INSPECTED[key] = ("foreign", None)
        else:
            recorded = reader.meta.get(DIGEST_KEY)
            if not isinstance(recorded, str):
                _INSPECTED[key] = ("foreign", reader.meta)
            else:
                _INSPECTED[key] = ("finished" if digest.finish(reader.skipped) == recorded else "edited", reader.meta)
    return _INSPECTED[key]


def _finished_records(output: Path) -> Iterator[dict]:
    """The image records of an annotation file (either layout), already checked by :func:`inspect_output`."""
    yield from AnnotationReader(output, validate=False)


def _shard_text(shard: dict | None) -> str:
    return f"shard {shard['index']} of {shard['count']}" if shard else "an unsharded run"


def _shared_output(flag: str, output: Path, what: str) -> InputError:
    stem, suffix = output.stem, output.suffix or ".json"
    return InputError(f"{flag}: {output} {what}; shards must not share an output: give each shard its own "
                      f"--output_file ({stem}.0{suffix}, {stem}.1{suffix}, ...) and merge them with "
                      "merge_annotations.py (or move the file away)")


def _progress_headers(output: Path) -> Iterator[tuple[Path, dict]]:
    """(progress file, header settings) of every progress file of ``output`` that has a header."""
    try:
        entries = sorted(os.scandir(output.parent), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if not entry.is_file(follow_symlinks=False) or output_of(entry.path) != output:
            continue
        try:
            first = next((line for _, line in _lines(Path(entry.path))), None)
            rec = parse_line(first, entry.path) if first else None
        except (OSError, InputError):
            continue  # its own run (or a rerun) reports what is wrong with it
        if isinstance(rec, dict) and set(rec) == {"header"} and isinstance(rec["header"], dict):
            yield Path(entry.path), rec["header"]


def claim_output(output: str | Path, settings: dict, restart: bool = False, lock: bool = True,
                 flag: str = "--output_file") -> None:
    """Refuse an output this run must not write, before any work; with ``lock`` (the process that writes the
    output: rank 0), hold ``<output>.lock`` until :func:`write_from_progress` (or the process) ends.

    Refused, each with one line: an output another live run is writing; an output or a progress file of it
    that belongs to another shard (``settings["shard"]``, absent for an unsharded run); unless ``restart``,
    an output edited since its run wrote it, or one this tool did not write.
    """
    output = Path(output)
    shard = settings.get("shard")
    if lock:
        try:
            _lock(output, flag)
        except OutputBusy as e:
            if shard is None:
                raise
            raise InputError(f"{e}; if it is another shard, give each shard its own --output_file and merge them "
                             "with merge_annotations.py") from None
    try:
        for path, header in _progress_headers(output):
            if header.get("shard") != shard:
                raise _shared_output(flag, output, f"is being made by {_shard_text(header.get('shard'))} "
                                                   f"(its progress file {path.name} is there; delete it if that "
                                                   "run is abandoned)")
        state, meta = inspect_output(output)
        if state in ("finished", "edited") and meta.get("shard") != shard:
            raise _shared_output(flag, output, f"holds the annotations of {_shard_text(meta.get('shard'))}")
        if restart or state in ("missing", "finished"):
            return
        if state == "edited":
            raise InputError(f"{flag}: {output} was edited after the run that wrote it; to re-annotate, move it "
                             "away or pass --restart; to keep the edits, give this run another --output_file "
                             "(or describe the corrected boxes again: export_annotations.py --format coco, then "
                             "import_labels.py --coco)")
        raise InputError(f"{flag}: {output} exists and is not an annotation file this tool wrote (or an older "
                         "version did: it records no digest of its records); move it away, or pass --restart "
                         "to replace it")
    except BaseException:
        _unlock(output)
        raise


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
    digest = RecordsDigest()
    with AnnotationWriter(path, style="lines") as writer:  # strict JSON: NaN is refused, not written
        for i, rec in enumerate(records):
            validate_image_record(rec, path, f"images[{i}]")
            if rec["image"] in seen:
                raise AnnotationError(path, f"images[{i}].image", f"{rec['image']!r} listed twice")
            seen.add(rec["image"])
            writer.write(rec)
            digest.add(rec)
            counts["images"] += 1
            counts["objects"] += len(rec["objects"])
            counts["qa"] += len(rec.get("qa", []))
        # Last in meta: a rerun tells the file it wrote from one edited since (claim_output).
        meta = {**{k: v for k, v in meta.items() if k != DIGEST_KEY}, DIGEST_KEY: digest.finish(skipped)}
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
    _unlock(Path(output_file))  # claim_output's lock on the output itself
    return counts
