"""import_labels.py: messy COCO files and YOLO datasets -> the toolkit's annotation file, described by BLIP."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from vlm_annotation import import_labels, merge_annotations
from vlm_annotation.progress import progress_path
from vlm_core.schema import load_annotations

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def images_dir(tmp_path):
    out = tmp_path / "images"
    (out / "sub").mkdir(parents=True)
    Image.new("RGB", (100, 80), (90, 160, 60)).save(out / "a.jpg")
    Image.new("RGB", (60, 60), (200, 180, 120)).save(out / "sub" / "b.png")
    Image.new("RGB", (50, 40), (120, 120, 120)).save(out / "neg.jpg")
    Image.new("RGB", (30, 30), (0, 0, 0)).save(out / "not_in_coco.jpg")
    Image.new("RGB", (30, 20), (0, 0, 0)).save(out / "wrong_size.jpg")  # the COCO file says 20x30
    return out


def messy_coco() -> dict:
    return {
        "categories": [{"id": 7, "name": "Glass"}, {"id": 3, "name": "wine_bottle"}, {"id": 12, "name": "person"}],
        "images": [{"id": 10, "file_name": "a.jpg", "width": 100, "height": 80},
                   {"id": 20, "file_name": "./sub/b.png", "width": 60, "height": 60},
                   {"id": 30, "file_name": "neg.jpg", "width": 50, "height": 40},
                   {"id": 40, "file_name": "gone.jpg", "width": 50, "height": 50},
                   {"id": 50, "file_name": "wrong_size.jpg", "width": 20, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 10, 20, 30]},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [90, 70, 30, 20]},    # leaves the image: clipped
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [5, 5, 0, 10]},       # zero area: dropped
            {"id": 4, "image_id": 10, "category_id": 7, "bbox": [0, 0, 50, 50], "iscrowd": 1},  # crowd: dropped
            {"id": 5, "image_id": 10, "category_id": 12, "bbox": [1, 1, 5, 5]},       # class map null: dropped
            {"id": 6, "image_id": 20, "category_id": 3, "bbox": [-5, 10, 20, 20.004]},  # clipped
            {"id": 7, "image_id": 20, "category_id": 7, "bbox": [70, 70, 10, 10]},    # outside the image: dropped
            {"id": 8, "image_id": 40, "category_id": 7, "bbox": [1, 1, 10, 10]},      # image missing on disk
            {"id": 9, "image_id": 50, "category_id": 7, "bbox": [1, 1, 10, 10]},      # image of another size
        ]}


def args_for(tiny_models, out, *extra):
    return ["--output_file", str(out), "--captioner_model", str(tiny_models["blip"]), "--caption_max_tokens", "6",
            "--batch_size", "2", "--seed", "3", *extra]


def test_messy_coco_gives_exact_objects(tiny_models, images_dir, tmp_path, capsys):
    coco, class_map = tmp_path / "coco.json", tmp_path / "map.json"
    coco.write_text(json.dumps(messy_coco()))
    class_map.write_text(json.dumps({"person": None}))
    out = tmp_path / "annotations.json"
    assert import_labels.main(args_for(tiny_models, out, "--coco", str(coco), "--images_dir", str(images_dir),
                                       "--class_map", str(class_map))) == 0
    data = load_annotations(out)
    got = {r["image"]: [(o["id"], o["label"], o["bbox"], o["score"], o["sources"]) for o in r["objects"]]
           for r in data["images"]}
    assert got == {
        "a.jpg": [(0, "glass", [10.0, 10.0, 30.0, 40.0], 1.0, ["labels"]),
                  (1, "wine bottle", [90.0, 70.0, 100.0, 80.0], 1.0, ["labels"])],
        "neg.jpg": [],  # a negative, kept
        "sub/b.png": [(0, "wine bottle", [0.0, 10.0, 15.0, 30.0], 1.0, ["labels"])],
    }
    assert data["skipped"] == [
        {"image": "gone.jpg", "reason": "listed in coco.json but not found in --images_dir"},
        {"image": "wrong_size.jpg", "reason": "the image is 30x20 (as displayed) but the labels say 20x30"}]
    for rec in data["images"]:
        assert rec["caption"] and [q["type"] for q in rec["qa"]].count("count") == 1
        for o in rec["objects"]:
            assert o["description"].startswith(f"Here is a {o['label']}. The {o['label']} is ")
    # The Q&A vocabulary is the (mapped) categories: "person" is never asked about.
    assert not any("person" in q["question"] for r in data["images"] for q in r["qa"])
    neg = next(r for r in data["images"] if r["image"] == "neg.jpg")
    assert next(q for q in neg["qa"] if q["type"] == "count")["answer"].startswith("There are no")
    assert data["meta"]["labels_report"] == {
        "boxes": 3, "clipped": 2, "class_map_null": 1, "image_missing": 1, "images_missing": 1,
        "images_not_in_labels": 1, "images_size_mismatch": 1, "iscrowd": 1, "negative_images": 1,
        "outside_image": 1, "size_mismatch": 1, "zero_area": 1}
    assert data["meta"]["tool"] == "vlm_annotation/import_labels.py"
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("annotated 3 images: 3 objects, ") and ", 2 skipped, " in summary
    assert ("labels: 3 boxes, 2 clipped to the image; dropped 1 iscrowd region, 1 zero-area box, "
            "1 box entirely outside its image, 1 box of a class mapped to null by --class_map, "
            "1 box of an image missing on disk, 1 box of an image whose size differs from the labels'; "
            "kept 1 images without boxes (negatives); 1 images missing on disk (skipped); "
            "1 images whose size differs from the labels' (skipped); "
            "1 images of --images_dir not in the labels (left out)") in summary
    assert not progress_path(out).exists()

    # Two shards merged equal one run (same code path as data_annotation.py).
    parts = []
    for k in range(2):
        part = tmp_path / f"part{k}.json"
        assert import_labels.main(args_for(tiny_models, part, "--coco", str(coco), "--images_dir", str(images_dir),
                                           "--class_map", str(class_map), "--num_shards", "2",
                                           "--shard_index", str(k))) == 0
        parts.append(part)
    merged = tmp_path / "merged.json"
    assert merge_annotations.main(["--input_files", *map(str, parts), "--output_file", str(merged)]) == 0
    assert load_annotations(merged)["images"] == data["images"]


def _bad_coco_cases():
    def edit(fn):
        data = messy_coco()
        fn(data)
        return data
    return [
        (edit(lambda d: d.pop("categories")), "categories: missing"),
        (edit(lambda d: d.pop("images")), "images: missing"),
        (edit(lambda d: d.pop("annotations")), "annotations: missing"),
        (edit(lambda d: d["annotations"][3].update(bbox=[1, 2, 3])), "annotations[3].bbox: expected [x, y, width"),
        (edit(lambda d: d["annotations"][0].update(bbox=[1, 2, 3, "4"])), "annotations[0].bbox"),
        (json.loads(json.dumps(messy_coco()).replace("[10, 10, 20, 30]", "[10, 10, 20, NaN]")),
         "annotations[0].bbox"),
        (edit(lambda d: d["annotations"][2].update(image_id=99)), "annotations[2].image_id: no image with id 99"),
        (edit(lambda d: d["annotations"][1].update(category_id=1)), "annotations[1].category_id: no category"),
        (edit(lambda d: d["images"][1].update(file_name="/abs/b.png")), "images[1].file_name"),
        (edit(lambda d: d["images"][0].pop("width")), "images[0].width"),
        (edit(lambda d: d["categories"].append({"id": 7, "name": "x"})), "categories[3].id: duplicate"),
        ([1, 2], "(top level)"),
    ]


def test_bad_coco_is_one_line_naming_file_and_path(tiny_models, images_dir, tmp_path, capsys):
    out = tmp_path / "annotations.json"
    coco = tmp_path / "bad.json"
    for data, needle in _bad_coco_cases():
        coco.write_text(json.dumps(data))
        assert import_labels.main(args_for(tiny_models, out, "--coco", str(coco), "--images_dir",
                                           str(images_dir))) == 2
        err = capsys.readouterr().err.strip()
        assert f"{coco}: {needle}" in err and len(err.splitlines()) == 1, (needle, err)
    assert not out.exists() and not progress_path(out).exists()


def _yolo_dataset(root):
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "images" / "val" / "deep").mkdir(parents=True)
    (root / "labels" / "val" / "deep").mkdir(parents=True)
    Image.new("RGB", (200, 100), (90, 160, 60)).save(root / "images" / "train" / "t.jpg")
    Image.new("RGB", (100, 100), (90, 160, 60)).save(root / "images" / "val" / "deep" / "v.png")
    Image.new("RGB", (40, 40), (90, 160, 60)).save(root / "images" / "val" / "neg.jpg")  # no label file
    (root / "labels" / "train" / "t.txt").write_text(
        "0 0.25 0.5 0.1 0.2\n"              # [40, 40, 60, 60]
        "1 0.95 0.5 0.2 0.2\n"              # leaves the image: [170, 40, 210, 60] -> [170, 40, 200, 60]
        "\n"
        "1 0.1 0.1 0.2 0.1 0.2 0.3\n")      # a polygon: its box [20, 10, 40, 30]
    (root / "labels" / "val" / "deep" / "v.txt").write_text("1 0.5 0.5 0 0.2\n")  # zero width: dropped
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: glass\n  1: can\n")
    return root / "data.yaml"


def test_yolo_dataset(tiny_models, tmp_path, capsys):
    data_yaml = _yolo_dataset(tmp_path / "ds")
    out = tmp_path / "annotations.json"
    assert import_labels.main(args_for(tiny_models, out, "--yolo_data", str(data_yaml))) == 0
    data = load_annotations(out)
    got = {r["image"]: [(o["label"], o["bbox"]) for o in r["objects"]] for r in data["images"]}
    assert got == {"images/train/t.jpg": [("can", [20.0, 10.0, 40.0, 30.0]), ("glass", [40.0, 40.0, 60.0, 60.0]),
                                          ("can", [170.0, 40.0, 200.0, 60.0])],
                   "images/val/deep/v.png": [], "images/val/neg.jpg": []}
    assert "labels: 3 boxes, 1 clipped to the image; dropped 1 zero-area box; kept 2 images" in \
        capsys.readouterr().out
    # --images_dir: names count from there.
    out2 = tmp_path / "a2.json"
    assert import_labels.main(args_for(tiny_models, out2, "--yolo_data", str(data_yaml), "--images_dir",
                                       str(tmp_path / "ds" / "images"))) == 0
    assert [r["image"] for r in load_annotations(out2)["images"]] == ["train/t.jpg", "val/deep/v.png",
                                                                      "val/neg.jpg"]


def test_bad_yolo_labels_name_file_and_line(tiny_models, tmp_path, capsys):
    data_yaml = _yolo_dataset(tmp_path / "ds")
    label = tmp_path / "ds" / "labels" / "train" / "t.txt"
    out = tmp_path / "annotations.json"
    for text, needle in [("0 0.5 0.5 0.1\n", "line 1: expected 5 fields"),
                         ("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n", "line 2: class id 2 is not one of the names"),
                         ("0 0.5 0.5 0.1 x\n", "line 1: fields must be numbers")]:
        label.write_text(text)
        assert import_labels.main(args_for(tiny_models, out, "--yolo_data", str(data_yaml))) == 2
        err = capsys.readouterr().err.strip()
        assert f"{label}: {needle}" in err and len(err.splitlines()) == 1, err
    (tmp_path / "ds" / "data.yaml").write_text("train: images/train\nval: images/val\n")
    assert import_labels.main(args_for(tiny_models, out, "--yolo_data", str(data_yaml))) == 2
    assert "data.yaml: names:" in capsys.readouterr().err
    assert not out.exists() and not progress_path(out).exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_import_resumes_to_the_same_file(tiny_models, images_dir, tmp_path, sig):
    """A real subprocess stopped after two images (SIGTERM, kill -9); the same command again finishes the job."""
    coco = tmp_path / "coco.json"
    data = messy_coco()
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in (10, 20)]
    data["images"] = [im for im in data["images"] if im["id"] in (10, 20, 30)]
    coco.write_text(json.dumps(data))
    argv = ["--coco", str(coco), "--images_dir", str(images_dir)]
    reference = tmp_path / "reference.json"
    assert import_labels.main(args_for(tiny_models, reference, *argv, "--batch_size", "1")) == 0
    out = tmp_path / "annotations.json"
    script = [str(ROOT / "vlm_annotation" / "import_labels.py"),
              *args_for(tiny_models, out, *argv, "--batch_size", "1")]
    ready = tmp_path / "ready"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), FAULT_PAUSE_AFTER_LINES="3",
               FAULT_READY_FILE=str(ready))
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fault_inject.py"), *script], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate()[1][-2000:]
        proc.send_signal(sig)  # header + 2 images written, the third not
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "run the same command again to resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and len(progress_path(out).read_text().splitlines()) == 3
    done = subprocess.run([sys.executable, *script], env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_bytes() == reference.read_bytes()  # nothing lost, nothing twice
    assert not progress_path(out).exists()
