"""The files of a model folder that train_vlm.py writes, named once. Torch-free: inference and prediction
check a folder with it before loading any model library.

A finished folder holds the adapter (``adapter_config.json`` + ``adapter_model.safetensors``) or a full model
(``config.json`` + ``model.safetensors``), the processor, ``prompt_format.json`` (vlm_annotation.prompts),
``train_args.json`` (the run's settings; ``"status": "complete"``), ``metrics.json``, ``loss.png``, optionally
``merged/`` and ``checkpoint-N/`` folders. While training runs, ``train_args.json`` says ``"status":
"training"`` (a rerun continues that run); while the final model is moved in, :data:`SAVING_MARKER` is there.
"""
from __future__ import annotations

import os
from pathlib import Path

TRAIN_ARGS_FILE = "train_args.json"   # marks a folder train_vlm.py wrote; "status" says whether the run finished
# Present while the final model is moved into the folder: a folder holding it is half-written (inference
# refuses it; running the same training command again finishes it).
SAVING_MARKER = "saving.incomplete"
MERGED_DIR = "merged"                 # --merge_lora writes the merged model here
FULL_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                    "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def half_written(model_dir: str | os.PathLike) -> bool:
    """True when the final save into ``model_dir`` was interrupted: its files may mix two models."""
    return (Path(model_dir) / SAVING_MARKER).exists()
