"""The command-line flags that name a model and say how to load it, checked in one place: shared by
``vlm_inference.py`` (one question) and ``predict.py`` (a whole file). Importing it loads no model library."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from vlm_core.io_utils import InputError
from vlm_core.model_dir import MERGED_DIR, SAVING_MARKER, half_written
from vlm_core.runtime import add_precision_flag, require_model, resolve_device

DEFAULT_MAX_NEW_TOKENS = 128


class InferenceInputError(InputError, ValueError):
    """Bad input to :class:`VLMInference`: a ``ValueError`` for library callers, an ``InputError`` (one line,
    exit 2) for the command lines. ``index``: the offending item of a batched call (None: the whole call)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


def refuse_half_written(model_path: str | os.PathLike) -> None:
    """A model folder (or the merged/ folder inside one) whose final save by train_vlm.py was interrupted is refused."""
    local = Path(model_path).expanduser()
    for folder in (local, local.parent) if local.name == MERGED_DIR else (local,):
        if half_written(folder):
            raise InferenceInputError(f"--model_path: {local} is half-written: its final save was interrupted "
                                      f"({folder / SAVING_MARKER}); run the same train_vlm.py command again to "
                                      "finish it")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The flags that say which model to load and how (checked by :func:`check_model_args`)."""
    parser.add_argument("--model_path", required=True,
                        help="training output (LoRA adapter), a merged/full model folder, or a base model / hub id")
    parser.add_argument("--base_model", default=None,
                        help="base model for a LoRA adapter (default: the one named in its adapter_config.json)")
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"most tokens per answer (default {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    add_precision_flag(parser, "auto = bf16 (fp16 where the GPU lacks bf16) on a GPU, fp32 on the CPU")
    quant = parser.add_mutually_exclusive_group()
    quant.add_argument("--load_in_8bit", action="store_true", help="load the weights in 8 bits (CUDA only)")
    quant.add_argument("--load_in_4bit", action="store_true", help="load the weights in 4 bits (CUDA only)")


def check_model_args(args: argparse.Namespace) -> None:
    """The checks of :func:`add_model_args`' flags that need no model loaded."""
    if args.max_new_tokens < 1:
        raise InputError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    require_model(args.model_path, "--model_path")
    refuse_half_written(args.model_path)
    if args.base_model is not None:
        require_model(args.base_model, "--base_model")
    resolve_device(args.device)


