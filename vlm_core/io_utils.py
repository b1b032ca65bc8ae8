"""Reading and writing the JSON / JSONL files that stages exchange, a record at a time.

Writes are atomic (temp file in the same folder, flushed, fsynced, renamed), so a killed run
never leaves a half-written output. JSONL progress files are appended a record at a time and
flushed, so a killed run loses at most the record in flight.

Big files stream: :func:`stream_json` yields the elements of a file's one big list (a top-level
array, or the list under one key of a top-level object) one at a time, and the file's other
top-level keys as they come; :func:`stream_jsonl` yields the lines of a JSONL file. Memory holds
one record, never the file. :class:`RecordWriter` writes such files back record by record, with
the bytes ``json.dumps`` would give for the whole document (``orjson`` where that is provably the
same and faster).

Reading is strict, the same for every reader: ``NaN``/``Infinity`` (not JSON, and refused by
strict readers downstream) are refused naming the field; nesting too deep for the parser is one
line, not a ``RecursionError``; an error names the file and the line.
"""
from __future__ import annotations

import codecs
import json
import math
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson


class InputError(Exception):
    """Bad user input (a file, a flag, a field): reported as one line, exit code 2."""


class NotAJsonList(InputError):
    """A file read as a top-level JSON list starts with something else (``found``: its first character,
    '' when empty): the module that owns the expected format says which file it is instead."""

    def __init__(self, message: str, found: str):
        super().__init__(message)
        self.found = found


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
    with staged_output(path) as tmp:
        yield tmp
    _replace(tmp, path)


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_output(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_output` without the final rename: the fsynced temp is left for the caller.

    On any error inside the block the temp file is removed. The caller renames it (or removes it).
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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames inside ``path`` durable (a crash after the call cannot undo them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dumps_strict(data: Any, indent: int | None) -> str:
    try:
        return json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        if "JSON compliant" not in str(e):
            raise
        raise InputError(f"refusing to write NaN/Infinity ({nonfinite_field(data) or 'a value'}): "
                         "it is not JSON and strict readers reject it") from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as strict JSON (NaN/Infinity refused), atomically."""
    # Serialise first: a value that cannot be written must not leave a temp file behind.
    write_text_atomic(path, _dumps_strict(data, indent) + "\n")


class JsonlAppender:
    """Append records to a JSONL file, one flushed line each (for resumable runs)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_last_line()
        self._f = open(self.path, "a", encoding="utf-8")

    def _repair_last_line(self) -> None:
        # A last line without "\n": complete JSON (killed between the record and its newline) is
        # kept and given its newline, as readers count it done; anything else is a killed
        # writer's partial record: dropped, it is redone.
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # Find the last newline by reading backwards, never the whole file.
            pos, cut = size, 0
            while pos > 0:
                step = min(1 << 16, pos)
                f.seek(pos - step)
                k = f.read(step).rfind(b"\n")
                if k >= 0:
                    cut = pos - step + k + 1
                    break
                pos -= step
            f.seek(cut)
            tail = f.read()
            try:
                loads_strict(tail, _Where(self.path, None))
                complete = bool(tail.strip())
            except InputError:
                complete = False
            if complete:
                f.seek(size)
                f.write(b"\n")
            else:
                f.truncate(cut)

    def write(self, record: Any) -> None:
        self._f.write(_dumps_strict(record, None) + "\n")
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


def _open_input(path: Path, mode: str = "rb"):
    if not path.is_file():
        raise _not_a_file(path)
    try:
        return open(path, mode)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None


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


# ---------------------------------------------------------------------------------------------
# Strict decoding: NaN / Infinity refused naming the field, deep nesting refused in one line.

class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str):
    raise _NonFinite(name)


_MARK = object()


def _check_float(text: str) -> float:
    # A literal that overflows a double (1e400, or 310 digits) parses to inf without any hook.
    value = float(text)
    if value - value != 0.0:
        raise _NonFinite(text)
    return value


_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_check_float)
_MARKING = json.JSONDecoder(parse_constant=lambda _name: _MARK,
                            parse_float=lambda t: _MARK if math.isinf(float(t)) else float(t))


def _find(value: Any, target_test, path: str) -> str | None:
    if target_test(value):
        return path
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for sub_path, v in items:
        found = _find(v, target_test, sub_path)
        if found is not None:
            return found
    return None


def nonfinite_field(value: Any, path: str = "") -> str | None:
    """The path of the first NaN/Infinity inside ``value`` (for messages), or None."""
    return _find(value, lambda v: isinstance(v, float) and not math.isfinite(v), path)


# The C scanner recurses once per nesting level; Python's recursion limit stops it with a
# RecursionError, which we turn into one line. Real records nest a handful of levels.
_TOO_DEEP = "nested too deeply for a JSON record (the parser's limit is about {} levels)"


def _deep_message() -> str:
    return _TOO_DEEP.format(sys.getrecursionlimit())


class _Where:
    """Where a value sits, for messages: file, line and the field path of the value."""

    def __init__(self, path: Path, line=None, field: str = ""):
        # ``line``: a number, or a callable computing it (only when a message needs it).
        self.path, self._line, self.field = path, line, field

    @property
    def line(self) -> int | None:
        return self._line() if callable(self._line) else self._line

    @property
    def file_line(self) -> str:
        line = self.line
        return f"{self.path}: line {line}" if line is not None else f"{self.path}"

    def __str__(self) -> str:
        return self.file_line + (f": {self.field}" if self.field else "")


def decode_strict(text: str, where: _Where, start: int = 0) -> tuple[Any, int]:
    """``json.JSONDecoder.raw_decode`` made strict; errors are :class:`InputError` naming ``where``.

    Raises ``json.JSONDecodeError`` unchanged (the caller knows the file position).
    """
    try:
        return _STRICT.raw_decode(text, start)
    except _NonFinite as e:
        marked, _ = _MARKING.raw_decode(text, start)
        field = _find(marked, lambda v: v is _MARK, where.field) or where.field or "a value"
        raise InputError(f"{where.file_line}: {field}: {e.args[0]} is not a JSON number "
                         "(NaN/Infinity are not allowed)") from None
    except RecursionError:
        raise InputError(f"{where}: {_deep_message()}") from None


def loads_strict(text: str | bytes, where: _Where) -> Any:
    """One complete JSON value (a JSONL line, a small file), strictly; errors name ``where``."""
    try:
        # orjson refuses NaN/Infinity and overflowing numbers, and nests at most 1024 deep:
        # on any refusal the stdlib decoder below says what exactly is wrong.
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{where.file_line}: not UTF-8 text") from None
    stripped = len(text) - len(text.lstrip())
    try:
        value, end = decode_strict(text, where, stripped)
    except json.JSONDecodeError as e:
        if where.line is None:
            raise _syntax_error(where.path, None, text, e) from None
        raise InputError(f"{where.file_line}: invalid JSON: {e.msg} (column {e.pos + 1})") from None
    if text[end:].strip():
        raise InputError(f"{where.file_line}: invalid JSON: extra data after the value")
    return value


def parse_line(line: str | bytes, path: str | os.PathLike, line_number: int | None = None) -> Any:
    """One JSONL line (or any small JSON text) read strictly: NaN/Infinity, too deep nesting and
    bad syntax are an :class:`InputError` naming ``path`` and the line."""
    return loads_strict(line, _Where(Path(path), line_number))


def _syntax_error(path: Path, first_line: int | None, text: str, e: json.JSONDecodeError,
                  first_column: int = 0) -> InputError:
    """``first_column``: characters of the first line that precede ``text`` (a streamed buffer)."""
    line = (first_line or 1) + text.count("\n", 0, e.pos)
    start = text.rfind("\n", 0, e.pos)
    col = e.pos - start if start >= 0 else first_column + e.pos + 1
    return InputError(f"{path}: invalid JSON at line {line} column {col}: {e.msg}")


def read_json(path: str | os.PathLike) -> Any:
    """Load a (small) JSON file strictly, raising :class:`InputError` with the file named on any problem."""
    path = Path(path)
    text = read_text(path)
    stripped = len(text) - len(text.lstrip())
    where = _Where(path)
    try:
        value, end = decode_strict(text, where, stripped)
    except json.JSONDecodeError as e:
        raise _syntax_error(path, None, text, e) from None
    if text[end:].strip():
        line = 1 + text.count("\n", 0, end)
        raise InputError(f"{path}: invalid JSON at line {line}: extra data after the value")
    return value


# ---------------------------------------------------------------------------------------------
# Streaming readers.

_CHUNK = 1 << 20
_WS = re.compile(r"[ \t\n\r]*")
# A value that fails this close to the end of the buffer may only be cut off by the chunking.
_TAIL = 64


class _Scanner:
    """The top-level tokens of a JSON document read in chunks; every value is parsed by the json
    module's C scanner (``raw_decode``), so only whitespace and ``{ } [ ] , :`` are handled here."""

    def __init__(self, f, path: Path):
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.eof = "", 0, False
        self.newlines_read = 0  # newlines in all text read so far (the buffer included)
        self.column_before = 0  # characters of the buffer's first line already dropped
        self.one_per_line: bool | None = None  # are the list's records one a line? (see line_value)

    @property
    def lines_before(self) -> int:
        """Newlines before the buffer (counted on demand: only messages need line numbers)."""
        return self.newlines_read - self.buf.count("\n")

    def line(self, pos: int | None = None) -> int:
        return self.lines_before + self.buf.count("\n", 0, self.pos if pos is None else pos) + 1

    def _fill(self, at_least: int = _CHUNK) -> bool:
        if self.eof:
            return False
        if self.pos:
            last = self.buf.rfind("\n", 0, self.pos)
            self.column_before = self.pos - last - 1 if last >= 0 else self.column_before + self.pos
            self.buf, self.pos = self.buf[self.pos:], 0
        try:
            data = self.f.read(max(at_least, _CHUNK))
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError:
            raise InputError(f"{self.path}: not UTF-8 text (near line {self.line(len(self.buf))})") from None
        if not data:
            self.eof = True
        self.newlines_read += data.count(b"\n")
        self.buf += text
        return True

    def skip_ws(self) -> str:
        """Skip whitespace; return the next character ('' at the end of the file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, chars: str, what: str) -> str:
        c = self.skip_ws()
        if not c or c not in chars:
            found = repr(c) if c else "the end of the file"
            raise InputError(f"{self.path}: invalid JSON at line {self.line()}: expected {what}, found {found}")
        self.pos += 1
        return c

    def line_value(self, field: str) -> Any:
        """The value at the current position when it fills the rest of its line (one record a line,
        as an annotation run writes them): parsed by orjson, several times faster; otherwise, or
        on any refusal (which the stdlib parser then names), by :meth:`value`."""
        end = self.buf.find("\n", self.pos) if self.one_per_line is not False else -1
        if end < 0:
            return self.value(field)
        text = self.buf[self.pos:end].rstrip(" \t\r")
        if text.endswith(","):
            text = text[:-1]
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            # Not this layout (decided on the first record, so a file on one long line, or an
            # indented one, is not sliced and tried again for every record).
            if self.one_per_line is None:
                self.one_per_line = False
            return self.value(field)
        self.one_per_line = True
        self.pos += len(text)
        return value

    def value(self, field: str) -> Any:
        """Parse the JSON value at the current position (any size; the buffer grows to hold it)."""
        self.skip_ws()
        while True:
            where = _Where(self.path, self.line, field)
            try:
                value, end = decode_strict(self.buf, where, self.pos)
            except json.JSONDecodeError as e:
                cut_off = e.pos >= len(self.buf) - _TAIL or e.msg.startswith("Unterminated string")
                if cut_off and self._fill(len(self.buf) - self.pos):
                    continue
                raise _syntax_error(self.path, self.lines_before + 1, self.buf, e, self.column_before) from None
            # A number that ends where the buffer ends may go on in the next chunk.
            if end == len(self.buf) and self._fill():
                continue
            self.pos = end
            return value


def _items(sc: _Scanner, field: str) -> Iterator[Any]:
    sc.expect("[", "'['")
    if sc.skip_ws() == "]":
        sc.pos += 1
        return
    i = 0
    while True:
        yield sc.line_value(f"{field}[{i}]") if sc.skip_ws() == "{" else sc.value(f"{field}[{i}]")
        i += 1
        if sc.expect(",]", "',' or ']'") == "]":
            return


# What stream_json yields as the value of the list's key once the list's elements have come.
STREAMED = object()


def stream_json(path: str | os.PathLike, list_key: str | None = None) -> Iterator[tuple[str | None, Any]]:
    """Stream a JSON file: ``(None, element)`` for each element of its big list, then
    ``(list_key, STREAMED)``; ``(key, value)`` for every other top-level key, in file order.

    ``list_key=None``: the file is a top-level array. Otherwise it is an object, and the list is
    the value under ``list_key`` (the other values are read whole: keep them small).
    """
    path = Path(path)
    with _open_input(path) as f:
        sc = _Scanner(f, path)
        if list_key is None:
            if (found := sc.skip_ws()) != "[":
                raise NotAJsonList(f"{path}: expected a JSON list (a file starting with '[')", found)
            for item in _items(sc, ""):
                yield None, item
        else:
            if sc.skip_ws() != "{":
                raise InputError(f"{path}: expected a JSON object with {list_key!r}")
            sc.pos += 1
            if sc.skip_ws() == "}":
                sc.pos += 1
            else:
                while True:
                    if sc.skip_ws() != '"':
                        sc.expect('"', "a key in double quotes")
                    key = sc.value("(key)")
                    sc.expect(":", "':'")
                    if key == list_key and sc.skip_ws() == "[":
                        for item in _items(sc, key):
                            yield None, item
                        yield key, STREAMED
                    else:
                        yield key, sc.value(key)
                    if sc.expect(",}", "',' or '}'") == "}":
                        break
        if sc.skip_ws():
            raise InputError(f"{path}: invalid JSON at line {sc.line()}: extra data after the value")


def stream_jsonl(path: str | os.PathLike, skip_partial_last: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line; a bad line raises :class:`InputError`.

    With ``skip_partial_last``, a last line without a newline that does not parse is taken for
    the remains of a killed writer and skipped.
    """
    path = Path(path)
    with _open_input(path) as f:
        # Lines end at b"\n" only: U+2028 and friends may stand raw inside JSON strings.
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = loads_strict(line, _Where(path, number))
            except InputError:
                if skip_partial_last and not line.endswith(b"\n") and _utf8_up_to_a_cut(line):
                    return
                raise
            yield number, value


def _utf8_up_to_a_cut(data: bytes) -> bool:
    """UTF-8, except maybe a character cut off at the end (what a killed writer leaves)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.end == len(data) and e.reason == "unexpected end of data"
    return True


def iter_jsonl(path: str | os.PathLike, skip_partial_last: bool = True) -> Iterator[tuple[int, Any]]:
    """``(line_number, record)`` of a JSONL file, a killed writer's partial last line skipped."""
    return stream_jsonl(path, skip_partial_last)


def is_jsonl(path: str | os.PathLike) -> bool:
    """The layout a file name asks for: JSONL when it ends in ``.jsonl``, else one JSON document."""
    return str(path).endswith(".jsonl")


# ---------------------------------------------------------------------------------------------
# Streaming writers.

# orjson writes 1e-05 as 0.00001 where json writes the exponent form, refuses integers past 64
# bits, and writes NaN/Infinity as null where strict json refuses them; anywhere else its bytes are
# json.dumps' own (a test compares them on random documents and floats). A record whose orjson
# text holds an exponent, "0.0000" or null is written by json instead (byte for byte, or refused).
_ORJSON_MAY_DIFFER = (b"e+", b"e-", b"0.0000", b"null")
_INDENT = orjson.OPT_INDENT_2


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Only a "\\udXXX" escape read from an input can make a lone surrogate.
        raise InputError("refusing to write a lone UTF-16 surrogate (from a \\udXXX escape in an input): "
                         "not valid UTF-8") from None


def dumps_indented(value: Any, prefix: bytes) -> bytes:
    """``json.dumps(value, indent=2, ensure_ascii=False)`` as UTF-8, each line after the first
    indented by ``prefix`` (how the value looks nested inside an indented document)."""
    try:
        text = orjson.dumps(value, option=_INDENT)
        if b"e+" in text or b"e-" in text or b"0.0000" in text or b"null" in text:  # _ORJSON_MAY_DIFFER
            text = None
    except TypeError:
        text = None
    if text is None:
        text = _encode(_dumps_strict(value, 2))
    return text.replace(b"\n", b"\n" + prefix) if prefix else text


def dumps_line(value: Any, indent: int | None = None) -> bytes:
    """``json.dumps(value, ensure_ascii=False)`` as UTF-8 (one JSONL line without its newline)."""
    return _encode(_dumps_strict(value, indent))


def dumps_record_line(value: Any) -> bytes:
    """One JSONL record, compact (orjson: no spaces after separators); strict like :func:`dumps_line`.

    orjson writes NaN/Infinity as null: a record whose text holds a null goes through json, which
    writes None as null again and refuses NaN.
    """
    try:
        text = orjson.dumps(value)
        if b"null" not in text:
            return text
    except TypeError:
        pass
    return dumps_line(value)


class RecordWriter:
    """Write a file of records one record at a time, atomically (temp file, then rename).

    Layouts (``style``):

    - ``"indent"``: the bytes of ``json.dumps(document, indent=2, ensure_ascii=False) + "\\n"``,
      where the document is a list of the records (``list_key=None``) or an object whose
      ``list_key`` holds the records, followed by the ``tail`` keys given to :meth:`close`.
    - ``"lines"``: an object with one record per line inside ``list_key`` (greppable), then the
      tail keys, each on one line except those named in ``tail_indent`` (the annotation run's layout).
    - ``"jsonl"``: one record per line; tail keys as one line each, ``{"key": value}``.

    Use as a context manager; :meth:`close` (or leaving the block without an error) commits.
    ``commit=False`` leaves the fsynced temp file for the caller (``self.temp``) to rename.
    """

    def __init__(self, path: str | os.PathLike, list_key: str | None = None, style: str | None = None,
                 tail_indent: dict[str, int] | None = None, commit: bool = True):
        self.path = Path(path)
        self.list_key = list_key
        self.style = style or ("jsonl" if is_jsonl(self.path) else "indent")
        if self.style not in ("indent", "lines", "jsonl"):
            raise ValueError(f"unknown style {self.style!r}")
        self.tail_indent = tail_indent or {}
        self.count = 0
        self._commit = commit
        self._stage = staged_output(self.path)
        self.temp = self._stage.__enter__()
        self._f = open(self.temp, "wb", buffering=1 << 20)
        self._closed = False
        if self.style == "indent":
            self._item_prefix = b"  " if list_key is None else b"    "
            self._f.write(b"[" if list_key is None else b'{\n  ' + dumps_line(list_key) + b": [")
        elif self.style == "lines":
            self._f.write(b"{\n" + dumps_line(list_key) + b": [")

    def write(self, record: Any) -> None:
        if self.style == "jsonl":
            self._f.write(dumps_record_line(record) + b"\n")
        elif self.style == "indent":
            self._f.write((b"\n" if self.count == 0 else b",\n") + self._item_prefix
                          + dumps_indented(record, self._item_prefix))
        else:
            self._f.write((b"\n" if self.count == 0 else b",\n") + dumps_line(record))
        self.count += 1

    def write_many(self, records: Iterable[Any]) -> None:
        for r in records:
            self.write(r)

    def close(self, tail: dict[str, Any] | None = None) -> None:
        """Write the closing bytes and the ``tail`` keys, then commit the file."""
        tail = tail or {}
        if self.list_key is None and tail:
            raise ValueError("a top-level list has no other keys")
        f = self._f
        if self.style == "jsonl":
            for key, value in tail.items():
                f.write(dumps_line({key: value}) + b"\n")
        elif self.list_key is None:
            f.write(b"\n]\n" if self.count else b"]\n")
        elif self.style == "indent":
            end = b"\n  ]" if self.count else b"]"
            for key, value in tail.items():
                end += b",\n  " + dumps_line(key) + b": " + dumps_indented(value, b"  ")
            f.write(end + b"\n}\n")
        else:
            parts = [dumps_line(k) + b": " + dumps_line(v, self.tail_indent.get(k)) for k, v in tail.items()]
            f.write((b"\n]" if self.count else b"]") + b"".join(b",\n" + p for p in parts) + b"\n}\n")
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        if exc is None:
            try:
                self._f.close()  # the last buffered bytes: a full disk shows here
            except BaseException as e:
                self._stage.__exit__(type(e), e, e.__traceback__)
                raise
            self._stage.__exit__(None, None, None)  # fsync; on failure the temp is removed
            if self._commit:
                _replace(self.temp, self.path)
        else:
            try:
                self._f.close()
            except OSError:
                pass
            self._stage.__exit__(type(exc), exc, exc.__traceback__)

    def abort(self) -> None:
        """Drop the temp file; the output is left as it was."""
        if not self._closed:
            err = RuntimeError("aborted")
            self._finish(err)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self._finish(exc)
        elif not self._closed:
            self.close()



# ----------------------------------------------------------------------------- results and their report

def _digest(text: str) -> str:
    import hashlib
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _report_name(json_path: Path, report_path: Path) -> str:
    """How the JSON names its report: relative to the JSON's folder when it lies inside it."""
    try:
        return Path(os.path.relpath(report_path.resolve(), json_path.resolve().parent)).as_posix() \
            if report_path.resolve().is_relative_to(json_path.resolve().parent) else str(report_path.resolve())
    except ValueError:  # another drive (Windows)
        return str(report_path.resolve())


def write_results_with_report(json_path: str | os.PathLike, result: dict, report_path: str | os.PathLike,
                              report: str) -> None:
    """A scoring stage's two outputs as a set: the readable report first, then the results JSON naming the
    report's SHA-256 under ``"report"``, each written atomically. A run killed between the two writes leaves
    a JSON that names another report (:func:`report_is_current` says so); the same command again writes both."""
    json_path, report_path = Path(json_path), Path(report_path)
    write_text_atomic(report_path, report)
    write_json_atomic(json_path, {**result, "report": {"file": _report_name(json_path, report_path),
                                                        "sha256": _digest(report)}})


def report_is_current(json_path: str | os.PathLike) -> bool:
    """Whether a results JSON and the report it names were written by one run; False when either is missing,
    unreadable, or a run was killed between the two writes."""
    json_path = Path(json_path)
    try:
        named = read_json(json_path).get("report") or {}
        report = Path(named["file"])
        report = report if report.is_absolute() else json_path.parent / report
        return named.get("sha256") == _digest(report.read_text(encoding="utf-8"))
    except (OSError, ValueError, InputError, AttributeError, KeyError, TypeError):
        return False
