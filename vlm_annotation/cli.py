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


def report_input_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Turn an :class:`InputError` raised by ``main`` into one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return EXIT_INPUT_ERROR

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


def require_output_file(path: str | os.PathLike, flag: str) -> Path:
    """An output file path that can be written: checked up front, not after hours of work."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag}: {p} is a directory, expected a file path")
    parent = next((a for a in (p.parent, *p.parent.parents) if a.exists()), Path("."))
    if not parent.is_dir():
        raise InputError(f"{flag}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag}: cannot write into {parent}")
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
    """``auto`` -> ``cuda`` when a GPU is visible, else ``mps``, else ``cpu``."""
    import torch
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is visible")
    return device


def set_seed(seed: int) -> None:
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
