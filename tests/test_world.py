"""The synthetic world: the generator's contract, and a reduced world run that must learn.

The reduced run is `world/world.sh` itself (what `make world` runs) on fewer scenes and
shorter training; it asserts that the trained detectors find the objects, that the
descriptions name the surface the objects truly lie on, and that the VLM trained by
train_vlm.py answers counting and surface questions about held-out scenes better than its
baselines (scored against the ground truth), by a clear margin. Seeded: the figures are
stable from run to run on a CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_annotation.describer import description_surface
from vlm_core.schema import validate_annotations
from world.make_world import CLASSES, SURFACES, draw_scene, write_world
from world.truth import truth_annotations

ROOT = Path(__file__).resolve().parents[1]


def test_scenes_are_deterministic_and_pools_disjoint(tmp_path):
    a, b = write_world(tmp_path / "a", 12, 6, seed=3), write_world(tmp_path / "b", 12, 6, seed=3)
    assert a == b
    for pool, n in (("train", 12), ("heldout", 6)):
        files = sorted(p.name for p in (tmp_path / "a" / f"{pool}_images").iterdir())
        assert len(files) == n
        for name in files:
            assert (tmp_path / "a" / f"{pool}_images" / name).read_bytes() == \
                (tmp_path / "b" / f"{pool}_images" / name).read_bytes()
    hashes = {pool: {(tmp_path / "a" / f"{pool}_images" / im["file_name"]).read_bytes()
                     for im in a[pool]["images"]} for pool in ("train", "heldout")}
    assert not hashes["train"] & hashes["heldout"]
    assert not {im["file_name"] for im in a["train"]["images"]} & {im["file_name"] for im in a["heldout"]["images"]}
    other = write_world(tmp_path / "c", 12, 0, seed=4)
    assert other["train"]["annotations"] != a["train"]["annotations"]


def test_coco_ground_truth_matches_the_drawn_scene(tmp_path):
    world = write_world(tmp_path, 40, 0, seed=0)["train"]
    assert [c["name"] for c in world["categories"]] == list(CLASSES)
    by_image = {}
    for ann in world["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    counts, sizes, borders, overlaps = set(), set(), 0, 0
    for im in world["images"]:
        assert im["surface"] in SURFACES
        image = Image.open(tmp_path / "train_images" / im["file_name"])
        assert image.size == (im["width"], im["height"])
        sizes.add(image.size)
        anns = by_image.get(im["id"], [])
        counts.add(len(anns))
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert ann["surface"] == im["surface"] and ann["iscrowd"] == 0
            assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"] and w > 2 and h > 2
            borders += x == 0 or y == 0 or x + w == im["width"] or y + h == im["height"]
        boxes = [(a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]) for a in anns]
        overlaps += sum(min(p[2], q[2]) > max(p[0], q[0]) and min(p[3], q[3]) > max(p[1], q[1])
                        for i, p in enumerate(boxes) for q in boxes[i + 1:])
    assert min(counts) == 0 and max(counts) >= 5
    assert len(sizes) >= 3 and borders > 0 and overlaps > 0
    # The box is where the object is: the pixels inside differ from the plain ground around them.
    image, surface, objects = next(s for s in (draw_scene(0, "train", i) for i in range(20)) if s[2])
    pixels = np.asarray(image, np.float32)
    for obj in objects:
        x1, y1, x2, y2 = (int(v) for v in obj["bbox"])
        assert pixels[y1:y2, x1:x2].std() > 5


def test_ground_truth_annotations_name_the_surface(tmp_path):
    coco = write_world(tmp_path, 10, 0, seed=1)["train"]
    data = truth_annotations(coco, seed=42)
    validate_annotations(data, "truth")
    surfaces = {im["file_name"]: im["surface"] for im in coco["images"]}
    asked = 0
    for rec in data["images"]:
        for obj in rec["objects"]:
            assert description_surface(obj["description"], obj["label"]) == ("on", surfaces[rec["image"]])
            assert obj["sources"] == ["labels"] and obj["score"] == 1.0
        for qa in rec["qa"]:
            if qa["type"] == "surface":
                asked += 1
                assert qa["answer"] == surfaces[rec["image"]]
                assert qa["question"].endswith("lying on?")
    assert asked > 0


# world/world.sh on a reduced world, bounded by steps only: the same figures on a slow or a fast machine.
# The detectors and the captioner are the committed ones (world/models, trained by the same scripts: see its
# README): training them here would take most of the suite's time. The tiny LLaVA is built and trained here.
# One torch thread: the results do not depend on the machine's cores, and a busy CPU does not stall torch's
# thread pool (two threads on a loaded 2-core machine ran train_vlm.py 5x slower than one).
REDUCED = {"WORLD_MINUTES": "5", "WORLD_SEED": os.environ.get("WORLD_TEST_SEED", "0"), "WORLD_TRAIN_SCENES": "800",
           "WORLD_HELDOUT_SCENES": "800", "WORLD_MODELS_FROM": str(ROOT / "world" / "models"),
           # the VLM built from the committed tower and language model, not the committed grounding-pretrained one
           # (WORLD_VLM_FROM, make world's default): this run shows what the fine-tuning teaches from those two
           "WORLD_VLM_FROM": "", "WORLD_TOWER_FROM": str(ROOT / "world" / "models" / "tower"),
           "WORLD_LM_FROM": str(ROOT / "world" / "models" / "lm"),
           "WORLD_VLM_STEPS": "400", "WORLD_VLM_BATCH": "16", "WORLD_VLM_LR": "1e-3",
           "WORLD_QA_TYPES": "count surface location region_description region_label grounding",
           "WORLD_EVAL_SAMPLES": "48", "WORLD_THREADS": "1",
           "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reduced_world_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_run")
    env = dict(os.environ, PYTHON=sys.executable, WORLD_DIR=str(out), **REDUCED)
    env.pop("WORLD_README", None)  # never touch the repository's README from a test
    proc = subprocess.run(["bash", str(ROOT / "world" / "world.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), proc.stdout, out


@pytest.mark.world_run
@pytest.mark.timeout(1200)
def test_reduced_world_run_learns(reduced_world_run):
    """The toolkit's stages on 800 held-out scenes: detections, descriptions and the VLM's answers,
    scored against the ground truth, beat their baselines by a clear margin.

    Measured on 2026-12-04 (session 10: the committed tower is now tower L, and region questions are asked with the
    box drawn, WORLD_BOX_PROMPT=visual), seed 0 / seed 1, model against majority (untrained): count 0.609 / 0.516
    against 0.172 / 0.156 (0.062 / 0.141); location 0.607 / 0.259 against 0.036 / 0.074 (0.000 / 0.000); surface
    0.946 / 0.722 against 0.196 / 0.315 (0.268 / 0.019); describe_object naming the given label 1.000 / 1.000
    against 0.193 / 0.247 (0.005 / 0.000), the surface 0.957 / 0.758 against 0.278 / 0.303 (0.000 / 0.000), the cell
    0.856 / 0.828 against 0.219 / 0.222 (0.000 / 0.000); region_label 0.545 / 0.636 against 0.193 / 0.247 (0.209 /
    0.146); locate Acc@0.5 0.122 / 0.097 against 0.011 / 0.032 for the mean training box, mean IoU 0.267 / 0.289
    against 0.086 / 0.093, every answer a box.

    Session 9 (tower C, the box as text), seed 0 / seed 1, model against
    majority: count 0.625 / 0.547 against 0.172 / 0.156; location 0.554 / 0.315 against 0.000 / 0.037; surface
    1.000 / 1.000 against 0.250 / 0.296; describe_object naming the given label 1.000 / 1.000 against 0.193 / 0.247
    (the untrained model 0.904 / 0.934: the pretrained language model copies it already), the surface 1.000 / 1.000
    against 0.278 / 0.303 (untrained 0.107 / 0.071), the cell 0.893 / 0.823 against 0.219 / 0.222 (untrained
    0.369 / 0.232); region_label 0.332 / 0.232 against 0.193 / 0.247 (not asserted: seed 1 is below its majority);
    locate Acc@0.5 0.110 / 0.145 against 0.011 / 0.032 for the mean training box, mean IoU 0.262 / 0.302 against
    0.086 / 0.093, every answer a box.

    Session 8 (the random language model): count 0.500 / 0.516, location 0.268 / 0.185, the label named 1.000 /
    0.641, the cell 0.182 / 0.202 (not learnt), region_label 0.364 / 0.258, Acc@0.5 0.083 / 0.054.

    Before (session 7):
    Measured (seed 0, the world/models of an earlier make world run): YOLO mAP50 0.804, RT-DETR 0.707, the
    two fused at the setting --sweep recommends 0.829, against 0.000 for YOLO's boxes moved to another
    image; descriptions naming the true surface 1.000. The VLM (its vision tower pretrained box-aware for 800
    steps on 3000 training-pool scenes and then frozen, 300 steps of 16 on count, surface and location
    questions about the 720 training scenes), on the 64 test scenes: "how many objects are there?" 0.375
    against 0.172 for the majority answer and 0.000 untrained; "what is it lying on?" 1.000 against 0.250 and
    0.000; "where is the can?" 0.250 against 0.000 and 0.000 (fresh clone of 2026-12-04, 14:00 UTC; with the
    tower of before, pretrained for 400 steps on the 800 scenes, 0.391, 0.946 and 0.107).
    """
    results, stdout, _ = reduced_world_run
    assert "| surface |" in stdout and "| detection mAP50, yolo |" in stdout  # the table is printed
    det = results["detection"]
    assert det["chance"]["map50"] < 0.05, det
    assert det["yolo"]["map50"] >= 0.75 and det["rtdetr"]["map50"] >= 0.6, det
    # the ensemble at the setting its own sweep recommends is at least as good as either detector alone
    assert det["fusion_sweep"]["map50"] >= max(det["yolo"]["map50"], det["rtdetr"]["map50"]) - 0.01, det
    assert results["descriptions"]["surface_accuracy"] >= 0.95, results["descriptions"]
    vlm = results["vlm"]
    count, surface, location = vlm["count"], vlm["surface"], vlm["location"]
    assert count["n"] >= 50 and surface["n"] >= 40 and location["n"] >= 40, vlm
    assert count["model"] >= count["majority"] + 0.3 and count["model"] >= count["untrained"] + 0.3, count
    assert surface["model"] >= surface["majority"] + 0.35 and surface["model"] >= surface["untrained"] + 0.35, surface
    assert location["model"] >= location["majority"] + 0.15 and location["model"] >= location["untrained"] + 0.15, \
        location
    # the guide's API asked about the test scenes' true objects (world/api_eval.py), every field beside its baselines
    described = vlm["describe_object"]
    assert all(described[f]["n"] >= 150 and None not in (described[f]["majority"], described[f]["untrained"])
               for f in ("label", "surface", "position", "size")), described
    assert vlm["grounding"]["n"] >= 150 and vlm["region_label"]["n"] >= 150, vlm
    # the region types taught (issue 24), with margins that held for seeds 0 and 1: describe_object names the label it
    # is given (the untrained model with its pretrained language model mostly does too), the surface and the cell of
    # the box (the bar: 0.6 and majority + 0.3), and locate answers boxes nearer the truth than the mean
    # training box
    label = described["label"]
    assert label["model"] >= 0.95 and label["model"] >= label["majority"] + 0.3, label
    for field, margin in (("surface", 0.25), ("position", 0.3)):
        row = described[field]
        assert row["model"] >= row["majority"] + margin and row["model"] >= row["untrained"] + margin, (field, row)
    assert described["position"]["model"] >= 0.6, described["position"]
    # "what is in this box?" with the box drawn: issue 24's bar, max(majority, untrained) + 0.25, held on both seeds
    region = vlm["region_label"]
    assert region["model"] >= max(region["majority"], region["untrained"]) + 0.25, region
    grounding = vlm["grounding"]
    assert grounding["acc50"]["model"] >= grounding["acc50"]["majority"] + 0.05, grounding
    assert grounding["mean_iou"]["model"] >= grounding["mean_iou"]["majority"] + 0.1, grounding
    assert grounding["unparsed"]["model"] <= 0.15, grounding
    assert results["seconds"] > 0 and set(results["stages"]) >= {"world", "annotate", "vlm_train", "vlm_predict",
                                                                 "vlm_api"}


# Two families whose box frames differ, trained by world/families.sh on the reduced run's annotations (issue 26).
# Each family built from its tower and language model (WORLD_FAMILY_VLMS empty), not from its committed grounding-
# pretrained VLM (make world-families' default, whose locate tests/test_world_grounding.py asserts): this run shows
# what the fine-tuning teaches in each frame, with the margins measured below.
FAMILIES = {"WORLD_FAMILIES": "llava_next qwen2_5_vl", "WORLD_FAMILY_STEPS": "200", "WORLD_FAMILY_LANES": "2",
            "WORLD_API_OBJECTS": "150", "WORLD_FAMILY_VLMS": "", "WORLD_FAMILY_LR": "1e-3"}


@pytest.mark.world_run
@pytest.mark.timeout(1200)
def test_two_families_learn_in_their_own_frames(reduced_world_run, tmp_path):
    """LLaVA-NeXT (boxes as 0..1 of the original image, anyres processor) and Qwen2.5-VL (integer pixels of the image
    after smart_resize, JSON answers), each converted, trained and asked in its own frame, answer held-out scenes
    better than their baselines; locate's boxes are parsed by each family's parser and scored in pixels, so a frame
    error would show as lost Acc@0.5.

    Measured on 2026-12-04 (session 10, seed 0, 200 steps of 16 each on the reduced run's 720 training scenes, the
    committed towers), model (majority / untrained): LLaVA-NeXT count 0.438 (0.172 / 0.000), surface 1.000 (0.250 /
    0.000), location 0.518 (0.000 / 0.000), region_label 0.287 (0.193 / 0.000), locate Acc@0.5 0.034 (mean box 0.011),
    mean IoU 0.129 (0.086), every answer a box; Qwen2.5-VL (its own tower, world/models/towers/qwen2_5_vl) count 0.484
    (0.172 / 0.109), surface 1.000 (0.250 / 0.000), location 0.232 (0.000 / 0.000), region_label 0.207 (0.193), locate
    0.000 with 37% of its answers not a box (with a random tower trained along: count 0.125, surface 0.964).

    Qwen2.5-VL starts from its language model pretrained in its own frame (world/models/family_lms/qwen2_5_vl, as
    families.sh does by default); measured on 2026-12-05 (session 11, seed 0): count 0.359 (0.172 / 0.062), surface
    1.000, location 0.286, region_label 0.173, locate Acc@0.5 0.082 (mean box 0.011), mean IoU 0.205 (0.086), 2.7% not
    a box. LLaVA-NeXT starts from the world language model, as measured above: from its own family's, 200 steps were
    not enough to learn the surface (0.554; 1.000 after the families run's 500 steps).
    """
    results, _, out = reduced_world_run
    family_lms = tmp_path / "family_lms"
    family_lms.mkdir()
    (family_lms / "qwen2_5_vl").symlink_to(ROOT / "world" / "models" / "family_lms" / "qwen2_5_vl")
    env = dict(os.environ, PYTHON=sys.executable, WORLD_DIR=str(out), WORLD_FAMILY_LMS=str(family_lms), **REDUCED,
               **FAMILIES)
    env.pop("WORLD_README", None)
    proc = subprocess.run(["bash", str(ROOT / "world" / "families.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fam = json.loads((out / "families.json").read_text())
    assert list(fam) == ["llava", "llava_next", "qwen2_5_vl"], list(fam)
    assert "| qwen2_5_vl |" in proc.stdout  # the table is printed
    # LLaVA-1.5's row is the world run's own VLM
    assert fam["llava"]["count"]["model"] == results["vlm"]["count"]["model"]
    for name in ("llava_next", "qwen2_5_vl"):
        saved = json.loads((out / "families" / name / "vlm_model" / "box_frame.json").read_text())
        assert saved["family"] == name
        assert all(row["n"] >= 40 for key, row in fam[name].items() if key in ("count", "surface", "location"))
    next_, qwen = fam["llava_next"], fam["qwen2_5_vl"]
    for qtype, margin in (("count", 0.15), ("surface", 0.5), ("location", 0.2)):
        row = next_[qtype]
        assert row["model"] >= row["majority"] + margin and row["model"] >= row["untrained"] + margin, (qtype, row)
    # locate's boxes, parsed in LLaVA-NeXT's frame (0..1 of the original image) and scored in pixels, land nearer the
    # truth than the mean training box: boxes read in another frame (the padded square) would not
    ground = next_["grounding"]
    assert ground["acc50"]["model"] >= ground["acc50"]["majority"] + 0.01, ground
    assert ground["mean_iou"]["model"] >= ground["mean_iou"]["majority"] + 0.02, ground
    assert ground["unparsed"]["model"] <= 0.1, ground
    for qtype, margin in (("count", 0.15), ("surface", 0.5), ("location", 0.1)):
        row = qwen[qtype]
        assert row["model"] >= row["majority"] + margin and row["model"] >= row["untrained"] + margin, (qtype, row)
    # Qwen2.5-VL's pixel boxes, parsed after smart_resize and scored in pixels of the original image, land nearer the
    # truth than the mean training box, and are boxes
    ground = qwen["grounding"]
    assert ground["mean_iou"]["model"] >= ground["mean_iou"]["majority"] + 0.05, ground
    assert ground["unparsed"]["model"] <= 0.1, ground


@pytest.mark.world_run
@pytest.mark.timeout(600)
def test_world_run_trains_every_model(tmp_path):
    """world/world.sh's training path on a tiny world: YOLO (Ultralytics' trainer), RT-DETR and BLIP
    (transformers) trained side by side, the two annotation shards merged, the VLM trained and scored.
    Budgets far too small to learn: this checks the plumbing; test_reduced_world_run_learns the learning."""
    env = dict(os.environ, PYTHON=sys.executable, WORLD_DIR=str(tmp_path), WORLD_MINUTES="5", WORLD_SEED="0",
               WORLD_TRAIN_SCENES="24", WORLD_HELDOUT_SCENES="60", WORLD_YOLO_EPOCHS="1", WORLD_DETR_MIN="0.05",
               WORLD_BLIP_MIN="0.05", WORLD_VISION_STEPS="2", WORLD_VLM_STEPS="2", WORLD_EVAL_SAMPLES="8",
               WORLD_API_OBJECTS="8", WORLD_TOWER_FROM="",  # the tower pretrained in the run, as without world/models
               WORLD_LM_FROM="",  # a random language model and a tokenizer built in the run
               WORLD_VLM_FROM="",  # the VLM built in the run from those two
               WORLD_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    env.pop("WORLD_README", None)
    env.pop("WORLD_MODELS_FROM", None)
    proc = subprocess.run(["bash", str(ROOT / "world" / "world.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    models = tmp_path / "models"
    for path in ("yolo/yolo.pt", "yolo/train_info.json", "rtdetr/m/config.json", "rtdetr/p",
                 "rtdetr/train_info.json", "blip/config.json", "llava_random/config.json", "llava/config.json",
                 "llava/pretrain_info.json"):
        assert (models / path).exists(), path
    info = json.loads((models / "rtdetr" / "train_info.json").read_text())
    assert info["steps"] >= 1 and info["seed"] == 0
    annotations = json.loads((tmp_path / "annotations.json").read_text())
    assert len(annotations["images"]) == 60 and not list(tmp_path.glob("annotations.[01].json"))
    assert all(set(r["detector_boxes"]) == {"yolo", "rtdetr"} for r in annotations["images"])
    results = json.loads((tmp_path / "results.json").read_text())
    stages = results["stages"]
    assert json.loads((models / "llava" / "pretrain_info.json").read_text())["steps"] == 2
    assert set(stages) >= {"world", "yolo", "rtdetr", "blip", "vlm_vision", "annotate", "score_annotations", "vlm_train",
                           "vlm_predict", "vlm_predict_untrained", "vlm_api"}
    # YOLO trained beside RT-DETR and the captioner: the run took less than the sum of its stages
    assert 0 < results["seconds"] < sum(stages.values())
    assert "some side by side" in proc.stdout and "== rtdetr" in proc.stdout and "== yolo" in proc.stdout
    assert {"count", "surface", "describe_object", "region_label", "grounding"} <= set(results["vlm"])
    # the guide's API (world/api_eval.py) on the test scenes' true objects, beside every baseline
    described = results["vlm"]["describe_object"]
    assert set(described) == {"label", "surface", "position", "size", "size_balanced", "relation"}
    assert all(described[f]["n"] <= 8 and set(described[f]) == {"model", "majority", "untrained", "chance", "n"}
               and described[f]["untrained"] is not None and described[f]["majority"] is not None for f in described)
    assert "| describe_object(image, bbox, label): field right |" in (tmp_path / "results.md").read_text()
    # train_vlm.py --eval_generate's per-type learning curves, drawn beside results.md
    assert (tmp_path / "skill_curves.png").is_file() and "skill_curves.png" in (tmp_path / "results.md").read_text()
    # what the VLM is taught, scored against the truth: the auto-labels' Q&A and objects labelled twice
    assert "| auto-label Q&A true of the scene (all types) |" in (tmp_path / "results.md").read_text()
    assert results["labels_qa"]["true_objects"] > 0 and results["labels_qa"]["labelled_twice"] is not None
    # the pretrained vision tower stays frozen while the VLM trains (WORLD_VLM_TOWER=frozen, the default)
    from safetensors.torch import load_file
    train_args = json.loads((tmp_path / "vlm_model" / "train_args.json").read_text())
    assert train_args["train_vision_tower"] is False and train_args["learning_rates"]["vision_tower"] is None
    pretrained = load_file(models / "llava" / "model.safetensors")
    trained = load_file(tmp_path / "vlm_model" / "model.safetensors")
    tower = [k for k in pretrained if "vision_tower" in k]
    assert tower and all(pretrained[k].equal(trained[k]) for k in tower)
    assert any(not pretrained[k].equal(trained[k]) for k in pretrained if "language_model" in k)


def test_world_rejects_an_unknown_tower_setting(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, WORLD_DIR=str(tmp_path), WORLD_VLM_TOWER="thaw")
    env.pop("WORLD_README", None)
    proc = subprocess.run(["bash", str(ROOT / "world" / "world.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "error: WORLD_VLM_TOWER must be frozen or train, got 'thaw'\n"
    assert not list(tmp_path.iterdir())  # stopped before it wrote anything


def test_readme_block_is_replaced_by_the_generated_table():
    from world.report import README_BEGIN, README_END, replace_results_block, results_block

    block = results_block("| a | b |\n|---|---|\n", "make world", "20", 1043.4, "2026-11-29 08:50 UTC")
    assert block == ("Generated by `make world` (WORLD_MINUTES=20, 1043 s, 2026-11-29 08:50 UTC):\n\n"
                     "| a | b |\n|---|---|\n")
    readme = f"# Title\n\n## Results\n{README_BEGIN}\nold table\nmore\n{README_END}\n\n## Next\n"
    new = replace_results_block(readme, block)
    assert new == (f"# Title\n\n## Results\n{README_BEGIN}\nGenerated by `make world` (WORLD_MINUTES=20, 1043 s, "
                   f"2026-11-29 08:50 UTC):\n\n| a | b |\n|---|---|\n{README_END}\n\n## Next\n")
    assert replace_results_block(new, block) == new  # a rerun replaces, never appends
    empty = f"x\n{README_BEGIN}\n{README_END}\ny\n"
    assert replace_results_block(empty, "t\n") == f"x\n{README_BEGIN}\nt\n{README_END}\ny\n"
    assert results_block("t", "c", "5", None, "d") == "Generated by `c` (WORLD_MINUTES=5, d):\n\nt\n"
    for bad in ("no markers\n", f"{README_END}\n{README_BEGIN}\n", f"{README_BEGIN}\n{README_BEGIN}\n{README_END}\n"):
        with pytest.raises(ValueError, match="README"):
            replace_results_block(bad, block)


def test_readme_flag_refuses_a_file_without_markers(tmp_path, capsys):
    from world.report import main

    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert main(["results", "--run_dir", str(tmp_path), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--readme {readme}" in err and "world-results:begin" in err
    assert readme.read_text() == "# no markers\n" and not (tmp_path / "results.json").exists()
