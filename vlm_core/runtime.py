"""Runtime helpers every stage script shares: errors, Ctrl-C, SIGTERM and a full disk as one line;
one writer per output; paths and models checked up front; devices, precision and seeds."""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import random
import re
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from vlm_core.io_utils import InputError
from vlm_core.streams import survive_closed_stdout

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a program stopped by Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143   # ... and for one stopped by SIGTERM (128 + SIGTERM)
EXIT_DISK_FULL = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM and Kubernetes send on preemption) or SIGHUP (the terminal or ssh session went
    away), raised where Ctrl-C would be.

    A subclass of KeyboardInterrupt, so every ``except KeyboardInterrupt`` that saves work on
    Ctrl-C saves it on SIGTERM and SIGHUP too.
    """

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__()
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def handle_sigterm() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` in this (main) thread; a no-op elsewhere."""
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
        signal.signal(signal.SIGHUP, _raise_terminated)


INTERRUPTED_MESSAGE = "finished work is saved; run the same command again to resume"


def _end_progress_bars() -> None:
    """Close open tqdm bars, so a message after them starts on a line of its own."""
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def plural(n: int, word: str, many: str | None = None, width: int = 0) -> str:
    """``n`` and ``word`` in the number ``n`` asks for: ``plural(1, "image")`` is "1 image", ``plural(2, "image")``
    "2 images"; ``many``: an irregular plural (``plural(n, "class", "classes")``); ``width``: the number
    right-aligned in that many characters (a table's column)."""
    return f"{n:{width}d} {word if n == 1 else many or word + 's'}"


# How often a progress bar writing to a log (stderr not a terminal) prints its line.
LOG_PROGRESS_INTERVAL_S = 30.0
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_BAR = re.compile(r"\|[^|]*\|")


class _PlainLines:
    """A stream for tqdm that turns its redraws (``\\r`` + text, cursor moves) into whole plain lines, so a
    log holds one line per update and no escape codes."""

    def __init__(self, stream):
        self.stream, self._last = stream, None

    def write(self, text: str) -> None:
        for line in _ESCAPE.sub("", text).replace("\r", "\n").split("\n"):
            line = line.strip()
            # The count without the bar and the timings (whose widths vary): a redraw at the end adds nothing.
            progress = _BAR.sub("|", line).split(" [")[0]
            if line and progress != self._last:
                self.stream.write(line + "\n")
                self._last = progress

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar on stderr: live on a terminal; when stderr is a log file or a pipe, a plain line when it
    starts, every :data:`LOG_PROGRESS_INTERVAL_S` seconds and when it ends (no ``\\r``, no escape codes).
    ``position`` is dropped: stacked bars are debris in a log and garble a terminal that another bar scrolls;
    in a log, a bar that would not be left on screen (``leave=False``, an inner loop's) prints nothing."""
    from tqdm import tqdm
    kwargs.pop("position", None)
    if not sys.stderr.isatty():
        if not kwargs.get("leave", True):
            kwargs["disable"] = True
        kwargs.update(file=_PlainLines(sys.stderr), mininterval=max(kwargs.get("mininterval", 0),
                                                                    LOG_PROGRESS_INTERVAL_S),
                      ascii=True, ncols=80)
    return tqdm(iterable, **kwargs)


def _say(line: str) -> None:
    _end_progress_bars()
    print(line, file=sys.stderr, flush=True)


def report_input_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Turn an :class:`InputError` raised by ``main`` into one line on stderr and exit code 2.

    Ctrl-C and SIGTERM become one line too (exit 130 / 143): every output is written atomically
    or flushed a record at a time, so an interrupted stage has nothing to clean up, and the
    resumable ones pick up where they stopped when run again. A full disk is one line (exit 1),
    never a traceback; atomic writes leave the previous file untouched. A reader that closes the
    pipe early (``| head``) stops nothing: the stage finishes, its printed lines go nowhere.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        handle_sigterm()
        try:
            with survive_closed_stdout():
                return main(*args, **kwargs)
        except InputError as e:
            _say(f"error: {e}")
            return EXIT_INPUT_ERROR
        except KeyboardInterrupt as e:
            if not isinstance(e, Terminated):
                _say(f"interrupted: {INTERRUPTED_MESSAGE}")
                return EXIT_INTERRUPTED
            _say(f"terminated ({signal.Signals(e.signum).name}): {INTERRUPTED_MESSAGE}")
            return 128 + e.signum  # the shell's convention: 143 for SIGTERM, 129 for SIGHUP
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f": {e.filename}" if e.filename else ""
            _say(f"error: disk full{where} ({e.strerror}); free space and run the same command again")
            return EXIT_DISK_FULL

    return wrapper


class OutputBusy(InputError):
    """Another live run holds the output this run would write."""


def _temp_name_pattern(path: Path) -> "re.Pattern[str]":
    # The names io_utils.atomic_output gives its temp files: mkstemp(prefix=".NAME.", suffix=".tmp").
    return re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp")


def remove_stale_temps(output: str | os.PathLike) -> list[Path]:
    """Remove the temp files a killed atomic write of ``output`` left (``.NAME.XXXXXXXX.tmp``).

    Call it only while holding ``output``'s :func:`single_writer` lock: with no other live
    writer, every such file is the remains of a dead one. Returns what was removed.
    """
    path = Path(output)
    pattern = _temp_name_pattern(path)
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(path.parent):
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _lock_path(output: str | os.PathLike) -> Path:
    out = Path(os.path.abspath(output))  # "." and "dir/.." name a folder too: its lock sits beside it
    return out.with_name(f"{out.name}.lock")


# How long a run that finds the lock taken waits for the holder's line to become readable (the
# no-hard-link fallback writes it just after taking the lock) or for a dead run's lock, which
# another starting run is removing, to go away. Longer only on a machine that is badly overloaded.
_LOCK_SETTLE_S = 5.0
_HOLDER_LINE = re.compile(r"pid (\d+) on (\S+): ")


def _holder_line() -> bytes:
    """What a lock file says about its holder: ``pid N on HOST: COMMAND``."""
    return f"pid {os.getpid()} on {os.uname().nodename}: {' '.join(sys.argv)[:300]}".encode()


def _names_a_dead_process(line: str) -> bool:
    """The line names a process of this machine that has ended (its lock is being removed)."""
    m = _HOLDER_LINE.match(line)
    if not m or m[2] != os.uname().nodename:
        return False  # another machine's process: nothing here can tell
    try:
        os.kill(int(m[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, another user's
    return False


def _lock_error(flag: str, lock: Path, problem: str) -> InputError:
    return InputError(f"{flag}: the lock file {lock} {problem}")


def _new_locked_file(lock: Path, flag: str) -> tuple[int, Path]:
    """A new file beside ``lock`` that already holds this run's line and its flock."""
    import fcntl
    import secrets
    while True:
        temp = lock.with_name(f".{lock.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR):
                raise  # a full disk is reported as one (report_input_errors)
            raise _lock_error(flag, lock, f"cannot be created: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # the lock's holder took it for a dead run's temp file and removes it
            continue
        try:
            os.pwrite(fd, _holder_line(), 0)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return fd, temp


def _publish(lock: Path, flag: str) -> int | None:
    """Put a lock file at ``lock`` the way no other run can see it half-written; its descriptor, or
    None when ``lock`` exists already.

    The file is written and flocked under a temp name, then hard-linked to ``lock`` (which, like
    O_EXCL, fails when anything is there, a symlink included). A file system without hard links
    gets ``lock`` made with O_EXCL, locked, then written: a run that finds it empty waits for the
    line (:func:`_probe`).
    """
    import fcntl
    fd, temp = _new_locked_file(lock, flag)
    try:
        try:
            os.link(temp, lock)
        except FileExistsError:
            os.close(fd)
            return None
        except FileNotFoundError:
            os.close(fd)  # a lock holder took our temp file for a dead run's (_remove_dead_temps)
            return _publish(lock, flag)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK):
                os.close(fd)
                raise
            os.close(fd)
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # A starting run may have taken our new, still empty file for a dead run's (and
                # removed it) before our flock: then it is not ours.
                mine = _is_at(fd, lock)
                if mine:
                    os.pwrite(fd, _holder_line(), 0)
            except BlockingIOError:
                mine = False
            except BaseException:
                os.close(fd)
                raise
            if not mine:
                os.close(fd)
                return None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    return fd


def _probe(lock: Path, flag: str) -> str | None:
    """Look at the lock file another run put at ``lock``: the holder's line while a live run holds
    it; None when it is gone or was a dead run's (then removed): try again.

    Never follows a symlink and never writes to the file.
    """
    import fcntl
    try:
        mode = os.lstat(lock).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        raise _lock_error(flag, lock, "is a symlink; remove it (a lock is never written through a link)")
    if stat.S_ISDIR(mode):
        raise _lock_error(flag, lock, "is a directory; remove it")
    if not stat.S_ISREG(mode):
        raise _lock_error(flag, lock, "is not a regular file; remove it")
    readonly = False
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP, errno.EISDIR):
            return None  # replaced since the lstat: look again
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        try:  # another user's lock: reading is enough to see whether its run is alive
            fd, readonly = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), True
        except FileNotFoundError:
            return None
        except OSError:
            raise _lock_error(flag, lock, f"is not writable ({e.strerror}); remove it") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # replaced since the lstat: look again
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() if _is_at(fd, lock) else None
        except OSError as e:  # NFS locks a read-only descriptor only for reading
            raise _lock_error(flag, lock, f"is not writable ({e.strerror}); remove it") from None
        # Nobody holds it: its run is dead. Holding its flock, we are the only run that may remove
        # it (one that would replace it must first hold it too), and only while it is at the path.
        if not _is_at(fd, lock):
            return None
        if readonly:
            raise _lock_error(flag, lock, "was left by a run that ended and is not writable by this user; remove it")
        os.unlink(lock)
        return None
    finally:
        os.close(fd)


def _is_at(fd: int, path: Path) -> bool:
    """``fd`` is the file at ``path`` now (not one that was removed or replaced since it was opened)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


def _remove_dead_temps(lock: Path) -> None:
    """Remove the temp files of lock files that runs killed while taking the lock left behind."""
    import fcntl
    pattern = _temp_name_pattern(lock)
    with contextlib.suppress(OSError):
        for entry in os.scandir(lock.parent):
            if not (pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)):
                continue
            with contextlib.suppress(OSError):
                fd = os.open(entry.path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live run's temp is flocked
                    if _is_at(fd, Path(entry.path)):
                        os.unlink(entry.path)
                finally:
                    os.close(fd)


def acquire_writer_lock(output: str | os.PathLike, flag: str = "output", clean_temps: bool = True,
                        name: str | os.PathLike | None = None) -> int:
    """Take ``<output>.lock`` (fcntl.flock, non-blocking) and return its descriptor.

    Raises :class:`OutputBusy` (one line naming the holder: ``pid N on HOST: COMMAND``) while
    another live process holds it. The lock file is complete before any other run can see it
    (written under a temp name, then hard-linked into place), so the line is always there. The
    kernel releases a flock when its holder dies (kill -9 included), so a lock left by a dead
    process never blocks: the next run removes it. A symlink, a directory or a file this user
    cannot write at the lock's path is refused (InputError), and nothing is ever written through
    it. Release with :func:`release_writer_lock`, which also removes the lock file. With
    ``clean_temps``, stale temp files of ``output`` (:func:`remove_stale_temps`) are removed once
    the lock is held. ``name``: what the message calls the output, when the lock guards a file
    that stands for it (a progress file).
    """
    lock = _lock_path(output)
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + _LOCK_SETTLE_S
    while True:
        fd = _publish(lock, flag)
        if fd is not None:
            break
        holder = _probe(lock, flag)
        if holder is None:
            continue  # gone, or a dead run's lock that we removed: take it now
        # Empty: a no-hard-link file system's holder has not written its line yet. A dead process:
        # another starting run holds that dead run's lock for the moment it takes to remove it.
        if (not holder or _names_a_dead_process(holder)) and time.monotonic() < deadline:
            time.sleep(0.01)
            continue
        raise OutputBusy(f"{flag}: {name or output} is being written by another run "
                         f"({holder or 'another process'}); wait for it to finish or stop it")
    try:
        _remove_dead_temps(lock)
        if clean_temps:
            remove_stale_temps(output)
    except BaseException:
        release_writer_lock(output, fd)
        raise
    return fd


def release_writer_lock(output: str | os.PathLike, fd: int) -> None:
    """Remove ``<output>.lock`` (when it is still the file of ``fd``) and release the lock, in that
    order: a run that opened the file before it was removed finds it gone (:func:`_probe`)."""
    lock = _lock_path(output)
    with contextlib.suppress(OSError):
        if _is_at(fd, lock):
            os.unlink(lock)
    with contextlib.suppress(OSError):
        os.close(fd)


@contextlib.contextmanager
def single_writer(output: str | os.PathLike, flag: str = "output", clean_temps: bool = True) -> Iterator[Path]:
    """Hold ``<output>.lock`` for the duration: one writer per output, across processes.

    A second run refuses with one line naming the first (its pid and command); a lock left by a
    dead process never blocks; the lock file is removed when the holder finishes. Stale temp
    files of ``output`` left by a killed atomic write are removed once the lock is held.
    """
    fd = acquire_writer_lock(output, flag, clean_temps)
    try:
        yield _lock_path(output)
    finally:
        release_writer_lock(output, fd)


def require_path(path: str | os.PathLike | None, flag: str, kind: str = "any") -> Path:
    """A path given on the command line that must exist; the error names the flag."""
    if path is None:
        raise InputError(f"{flag} is required")
    p = Path(path)
    if kind == "dir" and not p.is_dir():
        raise InputError(f"{flag}: directory not found: {p}")
    if kind == "file" and not p.is_file():
        raise InputError(f"{flag}: file not found: {p}")
    if kind == "any" and not p.exists():
        raise InputError(f"{flag}: not found: {p}")
    return p


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def is_within(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or path.resolve().is_relative_to(folder.resolve())


def _writable_parent(p: Path, flag: str) -> None:
    parent = next((a for a in (p.parent, *p.parent.parents) if a.exists()), Path("."))
    if not parent.is_dir():
        raise InputError(f"{flag}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag}: cannot write into {parent}")


def require_output_file(path: str | os.PathLike, flag: str,
                        inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """An output file path that can be written: checked up front, not after hours of work.

    ``inputs`` maps the flags of the stage's input files to their paths: an output that is
    one of them is refused, so a typo can never overwrite what the stage reads. An input that is
    a folder (``--images_dir``, a model folder) is read-only to the stage: an output inside it is
    refused, as :func:`require_output_dir` refuses an output folder there (outputs never land
    among the images, where the next run would list them).
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag}: {p} is a directory, expected a file path")
    if p.exists() and not p.is_file():
        raise InputError(f"{flag}: {p} exists and is not a regular file")
    for in_flag, in_path in (inputs or {}).items():
        if in_path is not None and _same_path(p, Path(in_path)):
            raise InputError(f"{flag}: {p} is the same file as {in_flag}")
        _refuse_inside(p, flag, in_flag, in_path)
    _writable_parent(p, flag)
    return p


def _refuse_inside(p: Path, flag: str, in_flag: str, in_path: str | os.PathLike | None) -> None:
    if in_path is not None and Path(in_path).is_dir() and is_within(p, Path(in_path)):
        raise InputError(f"{flag}: {p} is inside {in_flag} ({in_path}); write outputs elsewhere")


def require_output_dir(path: str | os.PathLike, flag: str,
                       inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """An output folder that can be written and is not (inside) an input folder of the stage."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag}: {p} exists and is not a directory")
    for in_flag, in_path in (inputs or {}).items():
        _refuse_inside(p, flag, in_flag, in_path)
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError(f"{flag}: cannot write into {p}")
    else:
        _writable_parent(p, flag)
    return p


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub.constants import HF_HUB_CACHE
    return (Path(HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))).is_dir()


def require_model(name: str, flag: str) -> str:
    """A model given as a local path must exist; a hub id (``org/name``) is passed through.

    Offline, a hub id must already be in the local cache: ``models/llava`` that does not
    exist is then reported as missing here, not as a failed download deep inside a library.
    """
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if _HUB_ID.match(name) and path.suffix not in (".pt", ".pth", ".bin", ".safetensors"):
        if hub_offline() and not in_hub_cache(name):
            raise InputError(f"{flag}: {name} is not a local path, and the hub is offline "
                             "(HF_HUB_OFFLINE=1) with no cached copy of it")
        return name
    raise InputError(f"{flag}: model not found: {name} (give a local path or a hub id like org/name)")


def yolo_offline() -> bool:
    return hub_offline() or os.environ.get("YOLO_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def require_yolo_weights(name: str, flag: str = "--yolo_model") -> str:
    """A YOLO weights file: a local path, or one of Ultralytics' official names (``yolov8x.pt``,
    ``yolo11x.pt``, ``rtdetr-l.pt``), which Ultralytics downloads on first use.

    Offline, an official name that is not on disk fails here with one line that says so,
    instead of deep inside the library.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return str(path)
    if path.exists():
        raise InputError(f"{flag}: {name} is not a file (give the .pt weights file)")
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES
    official = path.name in GITHUB_ASSETS_NAMES or path.name in {f"rtdetr-{k}.pt" for k in "lx"}
    if official and len(path.parts) == 1:
        if yolo_offline():
            raise InputError(f"{flag}: {name} is an Ultralytics weights name that is downloaded on first use, "
                             "but this run is offline (YOLO_OFFLINE/HF_HUB_OFFLINE); give a local path")
        return name
    raise InputError(f"{flag}: model not found: {name} (give a local .pt path or an Ultralytics "
                     "weights name such as yolov8x.pt)")


def resolve_device(device: str | None = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``mps``, else ``cpu``; others are checked."""
    import torch
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device}: not a device (auto, cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA GPU is visible")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    elif parsed.type == "mps" and not mps_ok:
        raise InputError(f"--device {device}: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {device}: use auto, cpu, cuda, cuda:N or mps")
    return device


MAX_SEED = 2**32 - 1


def check_seed(seed: int, flag: str = "--seed") -> int:
    """numpy accepts seeds in 0..2**32-1 only: refuse others up front with the flag named."""
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"{flag} must be in 0..{MAX_SEED}, got {seed}")
    return seed


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch with a seed :func:`check_seed` accepted."""
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# One precision flag for the captioner, training and inference: --precision (old name --dtype).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_PRECISION_ALIASES = {"float32": "fp32", "fp32": "fp32", "float16": "fp16", "fp16": "fp16", "half": "fp16",
                      "bfloat16": "bf16", "bf16": "bf16", "auto": "auto"}


def precision_name(value: str) -> str:
    """``auto``, ``fp32``, ``bf16`` or ``fp16`` for any accepted spelling (``float16``, ``torch.bfloat16``, ...);
    argparse ``type=`` for ``--precision``."""
    name = _PRECISION_ALIASES.get(str(value).lower().replace("torch.", ""))
    if name is None:
        import argparse
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(PRECISIONS)}")
    return name


def add_precision_flag(parser, help_auto: str) -> None:
    """``--precision`` (alias ``--dtype``), with the same names and meaning in every stage."""
    parser.add_argument("--precision", "--dtype", dest="precision", type=precision_name, default="auto",
                        metavar="{" + ",".join(PRECISIONS) + "}",
                        help=f"numeric precision: {help_auto}; fp32, bf16 or fp16 force one "
                             "(float32/bfloat16/float16 are accepted too)")


def resolve_dtype(precision, device: str):
    """The torch dtype for ``precision`` on ``device``: ``auto`` is bf16 where the GPU supports it, else fp16
    on a GPU, fp32 on CPU / MPS. A torch.dtype passes through."""
    import torch
    if isinstance(precision, torch.dtype):
        return precision
    name = precision_name(precision or "auto")
    if name == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
