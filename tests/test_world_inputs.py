"""The world's scripts meet bad input as every stage does: a malformed COCO file stops the script with one line naming
the file and the field, exit code 2, no traceback; a corrupt image in a pretraining pool is reported and left out."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from PIL import Image

from vlm_annotation.label_readers import load_coco
from vlm_core.io_utils import InputError

GOOD = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24, "surface": "grass"},
                   {"id": 2, "file_name": "b.png", "width": 32, "height": 24, "surface": "sand"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [2, 3, 10, 8]},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [12, 4, 9, 9]}],
        "categories": [{"id": 0, "name": "can"}, {"id": 1, "name": "glass"}]}

# What each script is given; "{world}" is a world folder whose train.json is the bad file.
SCRIPTS = {
    "make_truth": ["--coco", "{world}/train.json", "--output_file", "{tmp}/truth.json"],
    "pretrain_lm": ["--coco", "{world}/train.json", "--base_model", "{tmp}/none", "--out", "{tmp}/out"],
    "pretrain_grounding": ["--coco", "{world}/train.json", "--image_dir", "{world}/train_images",
                           "--base_model", "{tmp}/none", "--out", "{tmp}/out"],
    "pretrain_vision": ["--coco", "{world}/train.json", "--image_dir", "{world}/train_images",
                        "--base_model", "{tmp}/none", "--out", "{tmp}/out"],
    "make_llava": ["--world", "{world}", "--out", "{tmp}/out"],
    "make_family": ["--family", "llava_next", "--world", "{world}", "--out", "{tmp}/out"],
    "train_blip": ["--world", "{world}", "--out", "{tmp}/out"],
    "train_rtdetr": ["--world", "{world}", "--out", "{tmp}/out"],
    "train_yolo": ["--world", "{world}", "--out", "{tmp}/out"],
}

BAD = {  # the train.json text, and what the one line must name besides the file
    "syntax": ('{"images": [', "invalid JSON at line 1"),
    "bbox": (json.dumps(dict(GOOD, annotations=[dict(GOOD["annotations"][0], bbox=[1, 2, "x", 4])])),
             "annotations[0].bbox"),
    "category": (json.dumps(dict(GOOD, annotations=[dict(GOOD["annotations"][0], category_id=7)])),
                 "annotations[0].category_id"),
    "no images": (json.dumps({"annotations": [], "categories": []}), "images: missing"),
}


def write_images(folder: Path, corrupt: tuple[str, ...] = ()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for im in GOOD["images"]:
        if im["file_name"] in corrupt:
            (folder / im["file_name"]).write_bytes(b"not a png")
        else:
            Image.new("RGB", (im["width"], im["height"]), (40, 160, 40)).save(folder / im["file_name"])


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_malformed_coco_file_is_one_line_and_exit_2(script, bad, tmp_path, capsys):
    world = tmp_path / "world"
    write_images(world / "train_images")
    text, field = BAD[bad]
    (world / "train.json").write_text(text, encoding="utf-8")
    argv = [a.format(world=world, tmp=tmp_path) for a in SCRIPTS[script]]
    main = importlib.import_module(f"world.{script}").main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert str(world / "train.json") in err[0] and field in err[0], err[0]
    assert not (tmp_path / "out" / "config.json").exists()


def test_load_coco_returns_the_file_as_it_is(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(GOOD), encoding="utf-8")
    assert load_coco(tmp_path / "c.json") == GOOD


def test_a_corrupt_image_is_reported_and_left_out_of_the_tower_pool(tmp_path, capsys):
    from world.pretrain_vision import pool_views

    write_images(tmp_path / "images", corrupt=("a.png",))
    views = list(pool_views(GOOD, tmp_path / "images", boxed_views=1))
    assert [t["image"] for _, _, t in views] == [1, 1]  # b.png, as it is and outlined
    assert capsys.readouterr().err.strip() == "warning: skipped a.png: not a recognised image format"

    write_images(tmp_path / "none", corrupt=("a.png", "b.png"))
    with pytest.raises(InputError, match="none of the 2 images of the COCO file could be read"):
        list(pool_views(GOOD, tmp_path / "none"))
