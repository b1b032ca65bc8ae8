"""world/pretrain_vision.py: the world VLM's vision tower pretrained on the training pool's boxes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from world.make_world import write_world
from world.pretrain_vision import patch_targets

ROOT = Path(__file__).resolve().parents[1]


def pool_args(root: Path) -> list[str]:
    return ["--coco", str(root / "world" / "train.json"), "--image_dir", str(root / "world" / "train_images")]


def test_patch_targets_paint_boxes_of_the_padded_square_smallest_on_top():
    # An 8 x 4 image pads to an 8 x 8 square with 2 rows above; a 4 x 4 grid has patch centres at
    # 0.125, 0.375, 0.625 and 0.875 of the square. The big box [0, 0, 4, 4] covers x 0..0.5 and y 0.25..0.75
    # of the square (class 0 -> 1), the small one [2, 1, 4, 3] x 0.25..0.5, y 0.375..0.625 (class 2 -> 3).
    cells = patch_targets([[2, 1, 4, 3], [0, 0, 4, 4]], [2, 0], width=8, height=4, grid=4)
    assert cells == [0, 0, 0, 0,
                     1, 3, 0, 0,
                     1, 3, 0, 0,
                     0, 0, 0, 0]
    assert patch_targets([], [], width=8, height=8, grid=2) == [0, 0, 0, 0]
    # a square image: no padding, a box over the right half
    assert patch_targets([[4, 0, 8, 8]], [1], width=8, height=8, grid=2) == [0, 2, 0, 2]


@pytest.fixture(scope="module")
def tiny_world_llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    write_world(root / "world", 24, 0, seed=1)
    base = root / "llava_random"
    subprocess.run([sys.executable, str(ROOT / "world" / "make_llava.py"), "--world", str(root / "world"),
                    "--out", str(base), "--vision_width", "32", "--vision_layers", "1", "--text_width", "32",
                    "--text_layers", "1", "--text_intermediate", "64", "--image_size", "32", "--patch", "8"],
                   check=True, capture_output=True, timeout=300)
    return root, base


def _state(path: Path) -> dict:
    from transformers import LlavaForConditionalGeneration
    return LlavaForConditionalGeneration.from_pretrained(path).state_dict()


def test_pretraining_trains_only_the_vision_tower_and_leaves_the_base(tiny_world_llava, capsys):
    from transformers import AutoProcessor

    from world.pretrain_vision import main
    root, base = tiny_world_llava
    before = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
    out = root / "llava"
    assert main([*pool_args(root), "--base_model", str(base), "--out", str(out), "--max_steps", "4",
                 "--batch_size", "4", "--minutes", "5", "--seed", "0"]) == 0
    assert "pretrained the vision tower for 4 steps on 22 scenes" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()} == before  # the base is untouched
    start, trained = _state(base), _state(out)
    changed = {k for k in start if not torch.equal(start[k], trained[k])}
    assert changed and all("vision_tower" in k for k in changed)  # language model and projector as they were
    assert any("encoder.layers.0" in k for k in changed)
    info = json.loads((out / "pretrain_info.json").read_text())
    assert (info["steps"], info["train_images"], info["images"], info["seed"]) == (4, 22, 24, 0)
    assert 0 <= info["patch_accuracy"] <= 1 and 0 <= info["count_accuracy"] <= 1
    processor = AutoProcessor.from_pretrained(out)  # loads like any checkpoint, with its processor
    assert processor.tokenizer("USER:").input_ids
    assert not (root / "llava.tmp").exists()

    # seeded: a second run gives the same tower, and replaces the folder whole
    assert main([*pool_args(root), "--base_model", str(base), "--out", str(out), "--max_steps", "4",
                 "--batch_size", "4", "--minutes", "5", "--seed", "0"]) == 0
    again = _state(out)
    assert all(torch.equal(trained[k], again[k]) for k in trained)


def test_out_must_differ_from_the_base(tiny_world_llava, capsys):
    from world.pretrain_vision import main
    root, base = tiny_world_llava
    with pytest.raises(SystemExit) as stop:
        main([*pool_args(root), "--base_model", str(base), "--out", str(base)])
    assert stop.value.code == 2
    assert "--out must differ from --base_model" in capsys.readouterr().err
