"""The files of a model folder that train_vlm.py writes, named once. Torch-free: inference and prediction
check a folder with it before loading any model library.

A finished folder holds the adapter (``adapter_config.json`` + ``adapter_model.safetensors``) or a full model
(``config.json`` + ``model.safetensors``), the processor (LLaVA-1.5: with a chat template that renders what training
used, vlm_core.prompts.PromptFormat.chat_template), ``prompt_format.json`` (named in vlm_core.prompts),
``box_frame.json`` (the box frame of the model's family), ``train_args.json`` (the run's settings; ``"status":
"complete"``), ``metrics.json``, ``loss.png``, optionally
``merged/`` and ``checkpoint-N/`` folders. While training runs, ``train_args.json`` says ``"status":
"training"`` (a rerun continues that run); while the final model is moved in, :data:`SAVING_MARKER` is there.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

TRAIN_ARGS_FILE = "train_args.json"   # marks a folder train_vlm.py wrote; "status" says whether the run finished
# Present while the final model is moved into the folder: a folder holding it is half-written (inference
# refuses it; running the same training command again finishes it).
SAVING_MARKER = "saving.incomplete"
MERGED_DIR = "merged"                 # --merge_lora writes the merged model here
MODEL_CONFIG_FILE = "config.json"     # a full model (or merged/) holds it
ADAPTER_CONFIG_FILE = "adapter_config.json"   # a LoRA adapter holds it; it names the base model
MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                      "pytorch_model.bin.index.json")
FULL_MODEL_FILES = (MODEL_CONFIG_FILE, "generation_config.json", *MODEL_WEIGHT_FILES)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_FILES = (ADAPTER_CONFIG_FILE, *ADAPTER_WEIGHT_FILES)
FRAME_FILE = "box_frame.json"         # the box frame the model was taught in (vlm_core.families.BoxFrame)
METRICS_FILE = "metrics.json"         # loss per step and the run's totals
LOSS_PLOT_FILE = "loss.png"


def half_written(model_dir: str | os.PathLike) -> bool:
    """True when the final save into ``model_dir`` was interrupted: its files may mix two models."""
    return (Path(model_dir) / SAVING_MARKER).exists()


def remove_stale_model_files(out: Path, use_lora: bool, merge_lora: bool) -> list[str]:
    """Delete what an earlier run of the other mode (or an old merged model) left in ``out``."""
    removed = []
    candidates = [out / n for n in (FULL_MODEL_FILES if use_lora else ADAPTER_FILES)]
    if use_lora:
        candidates += sorted(out.glob("model-*-of-*.safetensors"))
    for path in candidates:
        if path.is_file():
            path.unlink()
            removed.append(path.name)
    if not merge_lora and (out / MERGED_DIR).is_dir():
        shutil.rmtree(out / MERGED_DIR)
        removed.append(MERGED_DIR + "/")
    return removed


def move_into(tmp: Path, dest: Path) -> None:
    """Move every entry of ``tmp`` into ``dest`` (each rename atomic) and remove ``tmp``."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in tmp.iterdir():
        if (dest / entry.name).is_dir():
            shutil.rmtree(dest / entry.name)
        os.replace(entry, dest / entry.name)
    tmp.rmdir()
