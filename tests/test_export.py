"""export_annotations.py: COCO that pycocotools loads, a YOLO dataset Ultralytics trains on, and round trips."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vlm_annotation import evaluate_annotations, export_annotations
from vlm_annotation.label_readers import read_coco, read_yolo

SIZES = {"a.jpg": (120, 90), "sub/b.png": (64, 48), "neg.jpg": (40, 30)}


@pytest.fixture()
def annotated(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name, size in SIZES.items():
        Image.new("RGB", size, (90, 160, 60)).save(images / name)
    objects = {"a.jpg": [("glass", [10.25, 5.5, 50.75, 60.13], 0.91, ["yolo", "rtdetr"]),
                         ("wine bottle", [60.01, 0.0, 120.0, 90.0], 0.45, ["rtdetr"]),
                         ("glass", [0.0, 70.33, 20.0, 89.99], 0.2, ["yolo"])],
               "sub/b.png": [("can", [1.0, 2.0, 63.99, 47.5], 0.77, ["yolo"])],
               "neg.jpg": []}
    records = [{"image": n, "width": SIZES[n][0], "height": SIZES[n][1], "caption": "grass",
                "objects": [{"id": k, "label": lab, "bbox": box, "score": s, "sources": src,
                             "description": f"Here is a {lab}."} for k, (lab, box, s, src) in enumerate(objs)],
                "qa": []} for n, objs in objects.items()]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": records, "skipped": [{"image": "bad.jpg", "reason": "unreadable"}],
                                "meta": {"images_dir": str(images)}}))
    return path, images, {n: [(lab, box) for lab, box, *_ in objs] for n, objs in objects.items()}


def _sorted(objs):
    return sorted(objs, key=lambda o: (o[1][1], o[1][0], o[0]))


def test_coco_export_loads_in_pycocotools_and_imports_back(annotated, tmp_path, capsys):
    from pycocotools.coco import COCO
    path, _, expected = annotated
    out = tmp_path / "coco.json"
    assert export_annotations.main(["--annotation_file", str(path), "--format", "coco",
                                    "--output_file", str(out)]) == 0
    assert "exported 3 images, 4 objects, 3 classes as COCO" in capsys.readouterr().out
    coco = COCO(str(out))
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    assert [c["name"] for c in coco.loadCats([1, 2, 3])] == ["can", "glass", "wine bottle"]
    assert sorted(im["file_name"] for im in coco.loadImgs(coco.getImgIds())) == sorted(SIZES)
    a_img = next(i for i in coco.dataset["images"] if i["file_name"] == "a.jpg")
    assert (a_img["width"], a_img["height"]) == (120, 90)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[a_img["id"]]))
    assert [a["score"] for a in anns] == [0.91, 0.45, 0.2]
    assert anns[0]["bbox"] == [10.25, 5.5, 40.5, 54.63]
    # Round trip: the same boxes, exactly (COCO keeps the file's 2 decimals).
    back = read_coco(out)
    assert {n: [(o["label"], o["bbox"]) for o in e["objects"]] for n, e in back.images.items()} == \
        {n: _sorted(objs) for n, objs in expected.items()}
    # --min_score leaves out the weak ones.
    out2 = tmp_path / "coco_min.json"
    assert export_annotations.main(["--annotation_file", str(path), "--format", "coco", "--output_file", str(out2),
                                    "--min_score", "0.5"]) == 0
    assert len(json.loads(out2.read_text())["annotations"]) == 2


def test_yolo_export_imports_back_within_format_precision(annotated, tmp_path):
    path, images, expected = annotated
    out = tmp_path / "yolo"
    assert export_annotations.main(["--annotation_file", str(path), "--format", "yolo",
                                    "--output_dir", str(out)]) == 0
    assert (out / "images" / "train" / "sub" / "b.png").is_symlink()
    assert (out / "labels" / "train" / "neg.txt").read_text() == ""
    line = (out / "labels" / "train" / "sub" / "b.txt").read_text()
    # can: cx = (1 + 63.99) / 2 / 64, cy = (2 + 47.5) / 2 / 48, w = 62.99 / 64, h = 45.5 / 48
    assert line == "0 0.507734 0.515625 0.984219 0.947917\n"
    back = read_yolo(out / "data.yaml", out / "images" / "train")
    got = {n: [(o["label"], o["bbox"]) for o in e["objects"]] for n, e in back.images.items()}
    assert set(got) == set(expected)
    for name, objs in expected.items():
        assert [lab for lab, _ in got[name]] == [lab for lab, _ in _sorted(objs)]
        for (_, box), (_, want) in zip(got[name], _sorted(objs)):
            assert box == pytest.approx(want, abs=0.011)  # 6 normalized decimals, then the file's 2
    assert not list(tmp_path.glob(".yolo.*"))  # no temp folder left

    # The export as ground truth (a data.yaml; its paths images/train/... match the file's by their tail).
    metrics = tmp_path / "metrics.json"
    assert evaluate_annotations.main(["--annotations", str(path), "--ground_truth", str(out / "data.yaml"),
                                      "--output_file", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert (m["map"], m["precision"], m["recall"], m["images"]["evaluated"]) == (1.0, 1.0, 1.0, 3)

    copied = tmp_path / "yolo_copy"
    assert export_annotations.main(["--annotation_file", str(path), "--format", "yolo", "--output_dir", str(copied),
                                    "--copy_images", "--images_dir", str(images)]) == 0
    b = copied / "images" / "train" / "sub" / "b.png"
    assert not b.is_symlink() and b.read_bytes() == (images / "sub" / "b.png").read_bytes()

    # A validation split of its own.
    val = tmp_path / "val.json"
    data = json.loads(path.read_text())
    val.write_text(json.dumps(dict(data, images=data["images"][1:])))
    split = tmp_path / "yolo_split"
    assert export_annotations.main(["--annotation_file", str(path), "--format", "yolo", "--output_dir", str(split),
                                    "--val_annotation_file", str(val)]) == 0
    assert yaml.safe_load((split / "data.yaml").read_text()) == {
        "path": str(split.resolve()), "train": "images/train", "val": "images/val",
        "names": {0: "can", 1: "glass", 2: "wine bottle"}}
    val_labels = split / "labels" / "val"
    assert sorted(p.relative_to(val_labels).as_posix() for p in val_labels.rglob("*.txt")) == ["neg.txt", "sub/b.txt"]


def test_ultralytics_trains_one_epoch_on_an_export(annotated, tiny_models, tmp_path):
    path, _, _ = annotated
    out = tmp_path / "yolo"
    assert export_annotations.main(["--annotation_file", str(path), "--format", "yolo",
                                    "--output_dir", str(out)]) == 0
    yolo = Path(sys.executable).with_name("yolo")
    env = dict(os.environ, YOLO_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    cmd = [str(yolo), "train", f"data={out / 'data.yaml'}", f"model={tiny_models['yolo']}", "epochs=1", "imgsz=64",
           "batch=2", "workers=0", "plots=False", "device=cpu", "amp=False", f"project={tmp_path / 'runs'}",
           "name=run", "exist_ok=True"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (tmp_path / "runs" / "run" / "weights" / "last.pt").is_file()


def test_bad_input_is_one_line_exit_2(annotated, tmp_path, capsys):
    path, images, _ = annotated
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    (images / "neg.jpg").rename(images / "moved.jpg")
    cases = [(["--format", "yolo", "--output_dir", str(busy)], "is not empty"),
             (["--format", "yolo", "--output_dir", str(tmp_path / "new")], "neg.jpg"),
             (["--format", "coco", "--output_file", str(path)], "is the same file as --annotation_file")]
    for extra, needle in cases:
        assert export_annotations.main(["--annotation_file", str(path), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "new").exists() and (busy / "x").exists()
    assert export_annotations.main(["--annotation_file", str(path), "--format", "coco"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --format coco needs --output_file", err
