"""Shared fixtures: tiny real-architecture models and sample images, built once per session.

Nothing here reaches the network: the environment is forced offline before any model
library is imported.
"""
from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from fixtures.tiny_models import build_all  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """Paths of the tiny models: yolo, rtdetr_model, rtdetr_processor, blip, llava."""
    return build_all(tmp_path_factory.mktemp("tiny_models"), seed=0)


@pytest.fixture(scope="session")
def sample_images_dir(tmp_path_factory):
    """A folder with bus.jpg, zidane.jpg and scenes/scene_*.{jpg,png}."""
    from fixtures.sample_images import write_sample_images
    out = tmp_path_factory.mktemp("sample_images")
    write_sample_images(out)
    return out
