"""Run a stage script with one fault injected, for the fault suite (tests/test_faults.py).

    FAULT_PAUSE_AFTER_LINES=3 FAULT_READY_FILE=/tmp/r python tests/fault_inject.py \\
        vlm_annotation/data_annotation.py --images_dir ... --output_file ...

The script runs as ``__main__`` in this process, exactly as ``python SCRIPT ARGS`` would run
it; the environment picks the fault:

- ``FAULT_PAUSE_AFTER_LINES=N``: after the N-th JSONL line the process appends (JsonlAppender,
  the progress files), touch ``FAULT_READY_FILE`` and wait until ``FAULT_GO_FILE`` exists
  (forever without one). A test then sends a real signal (SIGTERM, SIGKILL) or starts a
  second run at a known moment instead of racing the clock.
- ``FAULT_KILL_ON_TEMP=REGEX``: SIGKILL this process as soon as a temp file whose name
  matches is created (tempfile.mkstemp): a kill -9 at the start of an atomic write.
- ``FAULT_PAUSE_BEFORE_TEMP=REGEX``: before the first temp file whose name matches is created,
  touch ``FAULT_READY_FILE`` and wait as above (a signal then lands before that write begins).
- ``FAULT_ENOSPC_MATCH=REGEX`` and ``FAULT_ENOSPC_AFTER=N``: files opened for writing whose
  name matches hold N characters between them; the write that would go past that writes
  what fits and raises ``OSError(ENOSPC)``, as a full disk does.
"""
from __future__ import annotations

import builtins
import errno
import os
import re
import runpy
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _wait_for_go() -> None:
    ready, go = os.environ.get("FAULT_READY_FILE"), os.environ.get("FAULT_GO_FILE")
    if ready:
        Path(ready).touch()
    while not (go and os.path.exists(go)):
        time.sleep(0.02)


def _pause_after_lines(n: int) -> None:
    from vlm_core import io_utils
    real_write = io_utils.JsonlAppender.write
    count = 0

    def write(self, record):
        nonlocal count
        real_write(self, record)
        count += 1
        if count == n:
            _wait_for_go()

    io_utils.JsonlAppender.write = write


def _on_temp(kill: re.Pattern | None, pause: re.Pattern | None) -> None:
    real_mkstemp = tempfile.mkstemp
    paused = False

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        nonlocal paused
        if pause is not None and not paused and pause.fullmatch(f"{prefix}XXXXXXXX{suffix}"):
            paused = True
            _wait_for_go()
        fd, name = real_mkstemp(suffix, prefix, dir, text)
        if kill is not None and kill.fullmatch(os.path.basename(name)):
            os.kill(os.getpid(), signal.SIGKILL)
        return fd, name

    tempfile.mkstemp = mkstemp


class _FullDisk:
    """A text or binary file whose disk fills up: shares one budget with its siblings."""

    left = 0

    def __init__(self, f):
        self._f = f

    def write(self, data):
        if len(data) > _FullDisk.left:
            self._f.write(data[:_FullDisk.left])
            self._f.flush()
            _FullDisk.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._f.name)
        _FullDisk.left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _enospc(pattern: re.Pattern, budget: int) -> None:
    real_open = builtins.open
    _FullDisk.left = budget

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wax+")
        if writing and isinstance(file, (str, os.PathLike)) and pattern.fullmatch(os.path.basename(file)):
            return _FullDisk(f)
        return f

    builtins.open = open_


def main() -> None:
    script, *args = sys.argv[1:]
    sys.path.insert(0, str(ROOT))
    env = os.environ
    if env.get("FAULT_PAUSE_AFTER_LINES"):
        _pause_after_lines(int(env["FAULT_PAUSE_AFTER_LINES"]))
    kill, pause = (re.compile(env[k]) if env.get(k) else None
                   for k in ("FAULT_KILL_ON_TEMP", "FAULT_PAUSE_BEFORE_TEMP"))
    if kill or pause:
        _on_temp(kill, pause)
    if env.get("FAULT_ENOSPC_MATCH"):
        _enospc(re.compile(env["FAULT_ENOSPC_MATCH"]), int(env.get("FAULT_ENOSPC_AFTER", "0")))
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
