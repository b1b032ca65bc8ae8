"""world/pretrain_vision.py: the world VLM's vision tower pretrained on the training pool's boxes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from world.make_world import write_world
from world.pretrain_vision import (
    CELLS,
    SIZES,
    box_digits,
    covering_objects,
    load_pool,
    object_facts,
    patch_places,
    patch_targets,
)

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


def test_covering_objects_name_the_box_on_each_patch():
    # the same two boxes as above: index 1 is the big one, 0 the small one on top of it
    assert covering_objects([[2, 1, 4, 3], [0, 0, 4, 4]], width=8, height=4, grid=4) == [-1, -1, -1, -1,
                                                                                          1, 0, -1, -1,
                                                                                          1, 0, -1, -1,
                                                                                          -1, -1, -1, -1]


def test_box_digits_are_the_digits_of_the_box_text_convert_writes():
    from vlm_core.boxes import box_to_text

    # 100 x 50 pads to 100 x 100 with 25 rows above: [10, 0, 57, 50] -> [0.10, 0.25, 0.57, 0.75]
    assert box_to_text([10, 0, 57, 50], 100, 50) == "[0.10, 0.25, 0.57, 0.75]"
    assert box_digits([10, 0, 57, 50], 100, 50) == [1, 0, 2, 5, 5, 7, 7, 5]
    # the right edge is 1.00: tenths class 10, as "1.00" starts with 1 before the point
    assert box_digits([0, 0, 100, 100], 100, 100) == [0, 0, 0, 0, 10, 0, 10, 0]
    # rounded as format_box rounds (0.666... -> 0.67), never truncated
    assert box_digits([0, 0, 200, 300], 300, 300) == [0, 0, 0, 0, 6, 7, 10, 0]


def test_object_facts_are_the_describer_s_cell_and_size():
    # a 20 x 20 box in the bottom right of a 100 x 100 image: 4% of it, medium-sized
    cell, size, digits = object_facts([75, 75, 95, 95], 100, 100)
    assert (CELLS[cell], SIZES[size]) == ("bottom right", "medium-sized")
    assert digits == [7, 5, 7, 5, 9, 5, 9, 5]
    cell, size, _ = object_facts([0, 0, 10, 10], 100, 50)  # 2% of a 100 x 50 image: medium; the cell of the image
    assert (CELLS[cell], SIZES[size]) == ("top left", "medium-sized")
    assert SIZES[object_facts([40, 20, 50, 25], 100, 50)[1]] == "small"  # 50 px of 5000: 1%
    assert SIZES[object_facts([0, 0, 80, 50], 100, 50)[1]] == "large"


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


def test_the_pool_outlines_one_object_per_boxed_view_with_its_facts(tiny_world_llava):
    from transformers import AutoProcessor

    root, base = tiny_world_llava
    coco = json.loads((root / "world" / "train.json").read_text())
    processor = AutoProcessor.from_pretrained(base)
    pool = load_pool(coco, root / "world" / "train_images", processor.image_processor, grid=4, boxed_views=2, seed=0)
    with_objects = sum(1 for img in coco["images"] if any(a["image_id"] == img["id"] for a in coco["annotations"]))
    assert len(pool["image"]) == len(coco["images"]) + 2 * with_objects  # the image, and 2 outlined views of each
    plain = pool["boxed_class"] == 0
    assert int(plain.sum()) == len(coco["images"])
    assert bool((pool["boxed_cell"][plain] == 0).all()) and bool((pool["boxed_cell"][~plain] > 0).all())
    # the outline changes the pixels and nothing else: the class map and the count are the image's own
    for row in torch.nonzero(~plain).flatten().tolist()[:3]:
        first = int(torch.nonzero(pool["image"] == pool["image"][row]).flatten()[0])
        assert not torch.equal(pool["pixels"][row], pool["pixels"][first])
        assert torch.equal(pool["maps"][row], pool["maps"][first]) and pool["counts"][row] == pool["counts"][first]
    # the per-patch facts are scored on object patches only
    assert bool(((pool["cells"] == -100) == (pool["maps"] == 0)).all())


def test_patch_places_are_the_tenths_digits_of_each_patch_centre():
    # 8 patches a side: centres at 0.0625, 0.1875, ... 0.9375 of the padded square -> tenths 0, 1, 3, 4, 5, 6, 8, 9
    places = patch_places(8)
    assert len(places) == 64
    assert [p[0] for p in places[:8]] == [0, 1, 3, 4, 5, 6, 8, 9] and {p[1] for p in places[:8]} == {0}
    assert places[8] == [0, 1] and places[63] == [9, 9]  # row-major: the second row starts at y 0.1875
    assert patch_places(2) == [[2, 2], [7, 2], [2, 7], [7, 7]]


def test_tower_out_is_the_tower_make_llava_starts_from(tiny_world_llava, capsys):
    """pretrain_vision.py --tower_out writes the tower alone; make_llava.py --vision_tower_from puts it, bit for bit,
    into a new LLaVA of the same sizes (its language model random, as built) and refuses a tower of other sizes."""
    from world.make_llava import main as make_llava
    from world.pretrain_vision import main
    root, base = tiny_world_llava
    tower = root / "tower"
    assert main([*pool_args(root), "--base_model", str(base), "--out", str(root / "llava_cos"), "--max_steps", "3",
                 "--batch_size", "4", "--minutes", "5", "--seed", "0", "--schedule", "cosine",
                 "--tower_out", str(tower)]) == 0
    info = json.loads((tower / "pretrain_info.json").read_text())
    assert (info["steps"], info["schedule"]) == (3, "cosine") and 0 <= info["place_accuracy"] <= 1
    assert not (root / "tower.tmp").exists()
    sizes = ["--vision_width", "32", "--vision_layers", "1", "--text_width", "32", "--text_layers", "1",
             "--text_intermediate", "64", "--image_size", "32", "--patch", "8"]
    built = root / "llava_from_tower"
    assert make_llava(["--world", str(root / "world"), "--out", str(built), *sizes,
                       "--vision_tower_from", str(tower)]) == 0
    assert "the vision tower of" in capsys.readouterr().out
    pretrained, new, random = _state(root / "llava_cos"), _state(built), _state(base)
    towers = [k for k in new if "vision_tower" in k]
    assert towers and all(torch.equal(new[k], pretrained[k]) for k in towers)
    assert all(torch.equal(new[k], random[k]) for k in new if "vision_tower" not in k)  # the rest as built (seed 0)
    build_info = json.loads((built / "build_info.json").read_text())
    assert build_info["vision_tower_from"] == str(tower) and build_info["vision_tower_pretraining"]["steps"] == 3
    # a whole world LLaVA (pretrain_vision.py's --out) gives the same tower
    assert make_llava(["--world", str(root / "world"), "--out", str(root / "b2"), *sizes,
                       "--vision_tower_from", str(root / "llava_cos")]) == 0
    assert all(torch.equal(_state(root / "b2")[k], pretrained[k]) for k in towers)
    # another size, or a folder with no model: one line, exit 2
    capsys.readouterr()
    wider = [v if v != "32" or k != 1 else "64" for k, v in enumerate(sizes)]
    assert make_llava(["--world", str(root / "world"), "--out", str(root / "b3"), *wider,
                       "--vision_tower_from", str(tower)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after transformers' own "Loading weights" bar
    assert err.startswith("error: --vision_tower_from: the tower in") and "'hidden_size': 32" in err
    assert not (root / "b3").exists()
    assert make_llava(["--world", str(root / "world"), "--out", str(root / "b4"), *sizes,
                       "--vision_tower_from", str(root / "nothing")]) == 2
    assert "no config.json there" in capsys.readouterr().err
