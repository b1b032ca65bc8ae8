"""Small helpers every stage script shares: errors as one line, devices, seeds."""
from __future__ import annotations

import functools
import os
import random
import re
import sys
from pathlib import Path
from typing import Callable

from vlm_annotation.io_utils import InputError

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a program stopped by Ctrl-C


def report_input_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Turn an :class:`InputError` raised by ``main`` into one line on stderr and exit code 2.

    Ctrl-C becomes one line too (exit 130): every output is written atomically or flushed a
    record at a time, so an interrupted stage has nothing to clean up, and the resumable
    ones pick up where they stopped when run again.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return EXIT_INPUT_ERROR
        except KeyboardInterrupt:
            print("interrupted: finished work is saved; run the same command again to resume",
                  file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED

    return wrapper


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
    one of them is refused, so a typo can never overwrite what the stage reads.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag}: {p} is a directory, expected a file path")
    if p.exists() and not p.is_file():
        raise InputError(f"{flag}: {p} exists and is not a regular file")
    for in_flag, in_path in (inputs or {}).items():
        if in_path is not None and _same_path(p, Path(in_path)):
            raise InputError(f"{flag}: {p} is the same file as {in_flag}")
    _writable_parent(p, flag)
    return p


def require_output_dir(path: str | os.PathLike, flag: str,
                       inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """An output folder that can be written and is not (inside) an input folder of the stage."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag}: {p} exists and is not a directory")
    for in_flag, in_path in (inputs or {}).items():
        if in_path is not None and Path(in_path).is_dir() and is_within(p, Path(in_path)):
            raise InputError(f"{flag}: {p} is inside {in_flag} ({in_path}); write outputs elsewhere")
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
    import numpy as np
    import torch
    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
