"""One writer per output (vlm_core.runtime.single_writer): the lock file is complete before any
other run can see it, so a refusal always names the holder; a dead run's lock never blocks and is
removed only while it is at the path; a symlink, a directory or a file this user cannot write at
the lock's path is refused in one line and never written through (issue 22 point 7, issue 28
point 10). The races are run on real processes, many at once.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vlm_core import runtime
from vlm_core.runtime import OutputBusy, acquire_writer_lock, release_writer_lock, single_writer

ROOT = Path(__file__).resolve().parents[1]
HOST = os.uname().nodename
HOLDER = re.compile(rf"is being written by another run \(pid (\d+) on {re.escape(HOST)}: ")

# A child that tries to take the lock again and again for a while, holding it a moment each time
# it gets it; it prints one JSON line per try: when it held the lock, or the refusal it got. Its
# writes are slowed down (as a loaded machine would), so a lock file that other runs could see
# before its line is written would be seen that way often.
_RACER = r"""
import json, os, random, sys, time
from pathlib import Path
from vlm_core.runtime import OutputBusy, acquire_writer_lock, release_writer_lock
out, go, seconds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
real_pwrite = os.pwrite
def slow_pwrite(*args):
    time.sleep(0.002)
    return real_pwrite(*args)
os.pwrite = slow_pwrite
while not go.exists():
    time.sleep(0.001)
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        fd = acquire_writer_lock(out, "--output_file")
    except OutputBusy as e:
        print(json.dumps({"refused": str(e)}), flush=True)
        continue
    start = time.monotonic()
    time.sleep(random.uniform(0, 0.004))
    stop = time.monotonic()
    release_writer_lock(out, fd)
    print(json.dumps({"held": [start, stop]}), flush=True)
"""


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def test_many_runs_started_together_always_name_the_holder(tmp_path):
    """Before, a run that found the lock between its holder's flock and its write said "another
    process"; now every refusal names a live holder's pid, and no two runs ever hold it at once."""
    out, go = tmp_path / "out.json", tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(out), str(go), "2"], cwd=ROOT, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    time.sleep(1.0)  # let the interpreters start, then release them together
    go.touch()
    results = [r.communicate(timeout=120) for r in racers]
    assert [r.returncode for r in racers] == [0] * len(racers), [err[-2000:] for _, err in results]
    pids = {r.pid for r in racers}
    holds, refusals = [], []
    for racer, (stdout, _) in zip(racers, results):
        for line in stdout.splitlines():
            event = json.loads(line)
            if "held" in event:
                holds.append((*event["held"], racer.pid))
            else:
                refusals.append((event["refused"], racer.pid))
    assert len(holds) >= 8 and len(refusals) >= 20, (len(holds), len(refusals))  # it did race
    for message, pid in refusals:
        m = HOLDER.search(message)
        assert m, message
        assert int(m[1]) in pids - {pid}, message  # another racer, never itself or a stranger
    holds.sort()
    for (_, stop, pid), (start, _, next_pid) in zip(holds, holds[1:]):
        assert stop <= start, f"pid {pid} and pid {next_pid} held the lock at once"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go"]  # no lock file, no temp file left


def test_a_lock_file_appears_only_with_its_line(tmp_path):
    """The lock file is written and locked under a temp name and only then linked into place:
    a look at the path in the middle of taking it finds nothing or the whole line."""
    out, lock = tmp_path / "x.json", tmp_path / "x.json.lock"
    seen = []
    real_link = os.link

    def link_and_look(src, dst, *args, **kwargs):
        seen.append(lock.exists())
        real_link(src, dst, *args, **kwargs)
        seen.append(lock.read_text())

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "link", link_and_look)
        fd = acquire_writer_lock(out, "--output_file")
    try:
        assert seen == [False, lock.read_text()] and seen[1].startswith(f"pid {os.getpid()} on {HOST}: ")
    finally:
        release_writer_lock(out, fd)
    assert list(tmp_path.iterdir()) == []


def _hold_as_another_run(lock: Path, line: str | None) -> int:
    """Put a lock file held by a live run at ``lock`` (a separate open file: flock sees another run)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if line is not None:
        os.write(fd, line.encode())
    return fd


def test_a_holder_without_its_line_yet_is_waited_for(tmp_path):
    """Where the file system has no hard links the lock is made, locked, then written: a run that
    finds it still empty waits for the line instead of saying "another process"."""
    out, lock = tmp_path / "x.json", tmp_path / "x.json.lock"
    held = _hold_as_another_run(lock, None)
    writer = threading.Timer(0.3, os.write, (held, b"pid 4242 on elsewhere: python train_vlm.py"))
    writer.start()
    try:
        with pytest.raises(OutputBusy, match=r"another run \(pid 4242 on elsewhere: python train_vlm.py\); wait"):
            acquire_writer_lock(out, "--output_file")
    finally:
        writer.join()
        os.close(held)
    assert lock.read_text() == "pid 4242 on elsewhere: python train_vlm.py"  # not touched


def test_without_hard_links_the_lock_is_made_in_place(tmp_path, monkeypatch):
    def no_hard_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    out, lock = tmp_path / "x.json", tmp_path / "x.json.lock"
    with single_writer(out, "--output_file"):
        assert lock.read_text().startswith(f"pid {os.getpid()} on {HOST}: ")
        with pytest.raises(OutputBusy, match=rf"\(pid {os.getpid()} on "):
            acquire_writer_lock(out, "--output_file")  # another open file of it: another run to flock
    assert list(tmp_path.iterdir()) == []


def test_a_dead_runs_lock_replaced_under_a_starting_run_is_not_removed(tmp_path, monkeypatch):
    """A dead run's lock file is at the path; between a starting run's open of it and its flock, a
    third run removes it and takes the lock. The starting run holds the flock of a file nobody can
    find: it must not remove the third run's file, and refuses naming that run."""
    out, lock = tmp_path / "x.json", tmp_path / "x.json.lock"
    lock.write_text(f"pid 999999 on {HOST}: a run killed with kill -9")
    dead = lock.stat().st_ino
    real_flock = fcntl.flock
    third = []

    def flock_after_a_third_run_took_it(fd, op):
        if not third and os.fstat(fd).st_ino == dead:
            lock.unlink()
            third.append(_hold_as_another_run(lock, "pid 7 on elsewhere: the third run"))
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_third_run_took_it)
    try:
        with pytest.raises(OutputBusy, match=r"\(pid 7 on elsewhere: the third run\)"):
            acquire_writer_lock(out, "--output_file")
        assert os.path.samestat(os.fstat(third[0]), os.stat(lock))  # the third run's file is still there
    finally:
        for fd in third:
            os.close(fd)
    monkeypatch.undo()
    with single_writer(out, "--output_file"):  # the third run is gone now: its lock does not block
        assert lock.read_text().startswith(f"pid {os.getpid()} on {HOST}: ")
    assert list(tmp_path.iterdir()) == []


def test_temp_files_of_runs_killed_while_taking_the_lock_are_removed(tmp_path):
    out = tmp_path / "x.json"
    (tmp_path / ".x.json.lock.0a1b2c3d.tmp").write_text("pid 999999 on vm: killed")
    (tmp_path / ".x.json.lock.notours.tmp").write_text("")  # not a name the lock gives its temp files
    live = tmp_path / ".x.json.lock.99aa88bb.tmp"
    held = _hold_as_another_run(live, "pid 5 on elsewhere: taking the lock")
    try:
        with single_writer(out, "--output_file", clean_temps=False):
            pass
        assert sorted(p.name for p in tmp_path.iterdir()) == [".x.json.lock.99aa88bb.tmp", ".x.json.lock.notours.tmp"]
    finally:
        os.close(held)


# ---- what is planted at the lock's path, on the real stage script ---------------------------------

def _annotations(path: Path) -> Path:
    record = {"image": "a.jpg", "width": 64, "height": 48, "caption": "a scene", "objects": [],
              "qa": [{"question": "How many objects are there?", "answer": "There are no objects.",
                      "type": "count", "object_ids": []}]}
    data = {"images": [dict(record, image=f"img_{i}.jpg") for i in range(6)], "skipped": [], "meta": {}}
    path.write_text(json.dumps(data))
    return path


def _split(folder: Path, **kwargs) -> subprocess.CompletedProcess:
    argv = ["--input_file", str(folder / "annotations.json"), "--train_file", str(folder / "train.json"),
            "--val_file", str(folder / "val.json"), "--test_file", str(folder / "test.json")]
    return subprocess.run([sys.executable, "vlm_training/split_data.py", *argv], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120, **kwargs)


def _refused(result: subprocess.CompletedProcess, problem: str, lock: Path) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: --train_file: the lock file {lock} {problem}"], lines


@pytest.mark.parametrize("target", ["file", "missing"])
def test_a_symlink_at_the_lock_path_is_refused_and_not_followed(tmp_path, target):
    """Before, ``train.json.lock -> somefile`` truncated somefile and wrote a pid into it."""
    _annotations(tmp_path / "annotations.json")
    victim, lock = tmp_path / "precious.txt", tmp_path / "train.json.lock"
    if target == "file":
        victim.write_text("keep me\n")
    lock.symlink_to(victim)
    _refused(_split(tmp_path), "is a symlink; remove it (a lock is never written through a link)", lock)
    assert lock.is_symlink() and os.readlink(lock) == str(victim)
    assert victim.read_text() == "keep me\n" if target == "file" else not victim.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["annotations.json", lock.name]
                                                                + (["precious.txt"] if target == "file" else []))


def test_a_directory_at_the_lock_path_is_refused(tmp_path):
    _annotations(tmp_path / "annotations.json")
    lock = tmp_path / "train.json.lock"
    lock.mkdir()
    (lock / "inside.txt").write_text("keep me\n")
    _refused(_split(tmp_path), "is a directory; remove it", lock)
    assert [p.name for p in lock.iterdir()] == ["inside.txt"] and (lock / "inside.txt").read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json", lock.name]


def test_a_hard_link_at_the_lock_path_is_removed_never_written(tmp_path):
    """A file linked in at the lock's path looks like a dead run's lock: the run takes its place by
    removing that name, and the file behind it keeps every byte."""
    _annotations(tmp_path / "annotations.json")
    victim, lock = tmp_path / "precious.txt", tmp_path / "train.json.lock"
    victim.write_text("keep me\n")
    os.link(victim, lock)
    result = _split(tmp_path)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "keep me\n" and victim.stat().st_nlink == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json", "precious.txt", "test.json",
                                                          "train.json", "val.json"]


@contextlib.contextmanager
def _not_writable(path: Path):
    """Make ``path`` a file this user cannot write: read-only, or for root (whom permissions do
    not stop) immutable (chattr +i)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root where a file cannot be made immutable: nothing stops root's writes")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_a_lock_file_this_user_cannot_write_is_refused(tmp_path):
    """A dead run's lock file that belongs to someone else (or was made read-only): this run may
    not replace it, and says so in one line instead of a traceback."""
    _annotations(tmp_path / "annotations.json")
    lock = tmp_path / "train.json.lock"
    lock.write_text("pid 999999 on elsewhere: a run that ended\n")
    with _not_writable(lock):
        result = _split(tmp_path)
    _refused(result, "was left by a run that ended and is not writable by this user; remove it", lock)
    assert lock.read_text() == "pid 999999 on elsewhere: a run that ended\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json", lock.name]


def test_a_lock_that_cannot_be_created_is_one_line(tmp_path, monkeypatch):
    """A folder where no file can be made (read-only mount, no permission): one line, exit 2."""
    real_open = os.open

    def read_only_folder(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_folder)
    with pytest.raises(runtime.InputError, match=r"^--output_file: the lock file .*x\.json\.lock cannot be "
                                                 r"created: Read-only file system$"):
        acquire_writer_lock(tmp_path / "x.json", "--output_file")
