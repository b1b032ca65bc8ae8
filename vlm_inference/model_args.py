"""The command-line flags that name a model and say how to load it, checked in one place: shared by
``vlm_inference.py`` (one question) and ``predict.py`` (a whole file). Importing it loads no model library."""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from vlm_core import families
from vlm_core.generation import DEFAULT_MAX_NEW_TOKENS
from vlm_core.io_utils import InputError
from vlm_core.model_dir import (
    ADAPTER_CONFIG_FILE,
    FRAME_FILE,
    MERGED_DIR,
    SAVING_MARKER,
    TRAIN_ARGS_FILE,
    half_written,
)
from vlm_core.prompts import BOX_PROMPT_HELP, BOX_PROMPTS
from vlm_core.runtime import add_precision_flag, require_model, resolve_device


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


def refuse_damaged_weights(model_path: str | os.PathLike) -> None:
    """A ``.safetensors`` file of a model folder that is empty or cut short (a save or a copy that died half-way)
    is refused in one line naming it, before anything loads: its header must parse and cover the whole file.
    Only the header is read (safetensors maps the file), so a large model costs nothing to check."""
    local = Path(model_path).expanduser()
    if not local.is_dir():
        return
    from safetensors import SafetensorError, safe_open  # no torch: the numpy framework only parses the header
    for path in sorted(local.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except (SafetensorError, OSError) as e:
            reason = "empty" if path.stat().st_size == 0 else str(e).strip().splitlines()[0]
            raise InferenceInputError(f"--model_path: {path} is damaged ({reason}): it was cut short or never "
                                      "written whole; run the train_vlm.py command (or the save) again") from None


# A hub id ("org/name"): a name the toolkit recognises a family by, unlike the path of a folder that is gone.
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _read_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def trained_family(adapter_dir: Path) -> tuple[families.Family, str] | None:
    """The family of the model a LoRA adapter was trained on and where that is written (the box frame
    training saved, else the base model its train_args.json or adapter_config.json names, when that base
    is a folder here or a hub id); None when nothing says."""
    try:
        frame = families.BoxFrame.load(adapter_dir)
    except families.FamilyError:
        frame = None
    if frame is not None:
        return frame.spec, str(adapter_dir / FRAME_FILE)
    for file, key in ((TRAIN_ARGS_FILE, "base_model"), (ADAPTER_CONFIG_FILE, "base_model_name_or_path")):
        named = _read_object(adapter_dir / file).get(key)
        if isinstance(named, str) and (Path(named).expanduser().is_dir() or _HUB_ID.match(named)):
            try:
                return families.detect_family(named), f"{adapter_dir / file}: {named}"
            except families.FamilyError:
                continue
    return None


def refuse_family_mismatch(model_path: str | os.PathLike, base_model: str | None) -> None:
    """A LoRA adapter put on a base model of another family is refused in one line: its weights would not
    fit, or fit by name and answer garbage, and the prompt layout and box frame would be the other family's."""
    local = Path(model_path).expanduser()
    if base_model is None or not (local / ADAPTER_CONFIG_FILE).is_file():
        return
    trained = trained_family(local)
    try:
        given = families.detect_family(base_model)
    except families.FamilyError:
        return  # not a family the toolkit knows: loading it says what is wrong
    if trained is not None and trained[0].name != given.name:
        raise InferenceInputError(
            f"--base_model {base_model} is a {given.title} model, but the adapter in {local} was trained on a "
            f"{trained[0].title} model ({trained[1]}): pass a --base_model of the {trained[0].title} family")


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
    parser.add_argument("--box_prompt", choices=BOX_PROMPTS, default=None,
                        help=BOX_PROMPT_HELP + " (default: as the model was trained, from its prompt_format.json; "
                             "text for a base model; another value asks it that way, with a warning)")
    quant = parser.add_mutually_exclusive_group()
    quant.add_argument("--load_in_8bit", action="store_true", help="load the weights in 8 bits (CUDA only)")
    quant.add_argument("--load_in_4bit", action="store_true", help="load the weights in 4 bits (CUDA only)")


def check_model_args(args: argparse.Namespace) -> None:
    """The checks of :func:`add_model_args`' flags that need no model loaded."""
    if args.max_new_tokens < 1:
        raise InputError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    require_model(args.model_path, "--model_path")
    refuse_half_written(args.model_path)
    refuse_damaged_weights(args.model_path)
    if args.base_model is not None:
        require_model(args.base_model, "--base_model")
        refuse_family_mismatch(args.model_path, args.base_model)
    resolve_device(args.device)


