"""Waiting on the stages the fault tests start as real subprocesses (tests/test_faults.py,
tests/test_annotation_faults.py): their end, or the moment the fault injector reached its fault point."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

TIMEOUT = 240


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """The run's exit code and output; a run that hangs is killed (with its process group) and fails the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = TIMEOUT) -> None:
    """Until ``path`` exists (the injector's ready file); fails if the run ends or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before the fault point:\n{proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "the run never reached the fault point"
        time.sleep(0.05)
