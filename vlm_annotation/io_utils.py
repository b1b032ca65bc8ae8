"""Reading and writing the JSON / JSONL files that stages exchange.

Writes are atomic (temp file in the same folder, flushed, fsynced, renamed), so a
killed run never leaves a half-written output. JSONL progress files are appended a
record at a time and flushed, so a killed run loses at most the record in flight.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


class InputError(Exception):
    """Bad user input (a file, a flag, a field): reported as one line, exit code 2."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any error the temp file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); outputs are meant to be shared like any other file.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    # Serialise first: a value that cannot be written must not leave a temp file behind.
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Any]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


class JsonlAppender:
    """Append records to a JSONL file, one flushed line each (for resumable runs)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_partial_last_line()
        self._f = open(self.path, "a", encoding="utf-8")

    def _truncate_partial_last_line(self) -> None:
        # A run killed mid-write leaves a line without "\n": drop it, it is redone.
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    def write(self, record: Any) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _not_a_file(path: Path) -> InputError:
    return InputError(f"{path}: is a directory, expected a file" if path.is_dir() else f"{path}: file not found")


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file, or :class:`InputError` naming the file (missing, unreadable, not UTF-8)."""
    path = Path(path)
    if not path.is_file():
        raise _not_a_file(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None


def read_json(path: str | os.PathLike) -> Any:
    """Load a JSON file, raising :class:`InputError` with the file named on any problem."""
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def iter_jsonl(path: str | os.PathLike, skip_partial_last: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, record)``; a malformed line raises :class:`InputError` naming it.

    With ``skip_partial_last``, a last line without a newline that does not parse is taken
    for the remains of a killed writer and skipped.
    """
    path = Path(path)
    # Split on "\n" only: str.splitlines() would also cut at U+2028 and friends, which
    # ensure_ascii=False leaves raw inside JSON strings.
    parts = read_text(path).split("\n")
    lines = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            if skip_partial_last and i == len(lines) and not line.endswith("\n"):
                return
            raise InputError(f"{path}: line {i}: invalid JSON: {e.msg}") from None
