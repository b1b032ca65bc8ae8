"""Output streams that outlive their reader: ``train_vlm.py ... | head`` must not kill a training run.

Python ignores SIGPIPE, so the first print after the reader of stdout has gone raises BrokenPipeError;
in a training run that is a lost run (no checkpoint saved), in a conversion the files after the first
one never written, in a scoring script a traceback after the results were written.
:func:`survive_closed_stdout` (which every stage's ``main`` runs in, through
:func:`vlm_core.runtime.report_input_errors`) lets the first such write point stdout at /dev/null
instead, once, and the work goes on.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


class _Guarded:
    """``stream`` with BrokenPipeError turned into a switch of its file descriptor to /dev/null."""

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)
        self.reader_gone = True

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return self._stream.write(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def survive_closed_stdout() -> Iterator[None]:
    """Within the block, a closed reader of stdout sends the rest of the output to /dev/null."""
    original = sys.stdout
    try:
        original.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (pytest's capture, a StringIO): nothing to guard
        yield
        return
    sys.stdout = guarded = _Guarded(original)
    try:
        yield
    finally:
        try:
            guarded.flush()  # what is still buffered goes now, to /dev/null if need be, not at the interpreter's exit
        finally:
            sys.stdout = original
