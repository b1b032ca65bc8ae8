"""evaluate_annotations.py: pycocotools figures on hand-made cases, the detector table and the sweep."""
import json

from vlm_annotation import evaluate_annotations
from vlm_annotation.engine import fuse_detections


def coco_gt(images: dict[str, list[tuple[str, list]]], size=(200, 200), crowd=()) -> dict:
    """{file_name: [(label, [x, y, w, h])]} -> a COCO dict (category ids deliberately not 1..K)."""
    labels = sorted({lab for objs in images.values() for lab, _ in objs} | {"glass", "can"})
    cats = [{"id": 10 + 5 * i, "name": n} for i, n in enumerate(labels)]
    cid = {c["name"]: c["id"] for c in cats}
    out = {"images": [], "annotations": [], "categories": cats}
    for i, (name, objs) in enumerate(images.items()):
        out["images"].append({"id": 100 + i, "file_name": name, "width": size[0], "height": size[1]})
        for lab, box in objs:
            out["annotations"].append({"id": len(out["annotations"]) + 1, "image_id": 100 + i,
                                       "category_id": cid[lab], "bbox": box, "iscrowd": int(name in crowd)})
    return out


def annotation_file(images: dict[str, list[tuple[str, list, float]]], size=(200, 200), meta=None, extra=None):
    records = []
    for name, objs in images.items():
        records.append({"image": name, "width": size[0], "height": size[1], "caption": "",
                        "objects": [{"id": k, "label": lab, "bbox": box, "score": s, "sources": ["yolo"],
                                     "description": ""} for k, (lab, box, s) in enumerate(objs)],
                        "qa": [], **((extra or {}).get(name, {}))})
    return {"images": records, "skipped": [], "meta": meta or {"conf_threshold": 0.3}}


def run(tmp_path, annotations, gt, *extra):
    a, g, out = tmp_path / "a.json", tmp_path / "gt.json", tmp_path / "metrics.json"
    a.write_text(json.dumps(annotations))
    g.write_text(json.dumps(gt))
    code = evaluate_annotations.main(["--annotations", str(a), "--ground_truth", str(g), "--output_file", str(out),
                                      *extra])
    assert code == 0
    return json.loads(out.read_text()), out.with_suffix(".md").read_text()


GT = {"a.jpg": [("glass", [0, 0, 100, 100]), ("can", [100, 100, 50, 80])], "b.jpg": [("glass", [20, 30, 60, 40])]}


def test_perfect_detections_score_one(tmp_path):
    dets = {"a.jpg": [("glass", [0, 0, 100, 100], 0.9), ("can", [100, 100, 150, 180], 0.8)],
            "b.jpg": [("glass", [20, 30, 80, 70], 0.7)]}
    m, md = run(tmp_path, annotation_file(dets), coco_gt(GT))
    assert (m["map"], m["map50"], m["precision"], m["recall"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["per_class"]["glass"]["map"] == 1.0 and m["per_class"]["can"]["ground_truth_boxes"] == 1
    assert m["images"]["evaluated"] == 2 and m["conf_threshold"] == 0.3
    assert "| all | 1.000 | 1.000 | 1.000 | 1.000 |" in md


def test_wrong_class_scores_zero(tmp_path):
    dets = {"a.jpg": [("can", [0, 0, 100, 100], 0.9), ("glass", [100, 100, 150, 180], 0.8)],
            "b.jpg": [("bottle", [20, 30, 80, 70], 0.7)]}
    m, _ = run(tmp_path, annotation_file(dets), coco_gt(GT))
    assert (m["map"], m["map50"], m["precision"], m["recall"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["labels_not_in_ground_truth"] == ["bottle"]
    assert m["per_class"]["bottle"]["map"] is None and m["per_class"]["bottle"]["detections"] == 1


def test_shifted_boxes_hand_computed(tmp_path):
    # Two glasses. The first is found exactly (score 0.9); the second 20 px to the right (score 0.8):
    # IoU = 80 * 100 / (120 * 100) = 0.667, a match at IoU 0.50, 0.55, 0.60, 0.65, a miss at 0.70 ... 0.95.
    # At a miss, precision is 1 up to recall 0.5 and 0 beyond: COCO's 101-point AP = 51 / 101.
    # map = (4 * 1 + 6 * 51 / 101) / 10 = 710 / 1010.
    gt = {"a.jpg": [("glass", [0, 0, 100, 100]), ("glass", [100, 100, 100, 100])]}
    dets = {"a.jpg": [("glass", [0, 0, 100, 100], 0.9), ("glass", [120, 100, 220, 200], 0.8)]}
    m, _ = run(tmp_path, annotation_file(dets, size=(300, 300)), coco_gt(gt, size=(300, 300)))
    assert m["map"] == round(710 / 1010, 4) and m["map50"] == 1.0
    assert (m["precision"], m["recall"], m["true_positives"]) == (1.0, 1.0, 2)
    # A missed box and a false one: precision and recall 0.5 at IoU 0.5.
    dets = {"a.jpg": [("glass", [0, 0, 100, 100], 0.9), ("glass", [200, 0, 260, 50], 0.8)]}
    m, _ = run(tmp_path, annotation_file(dets, size=(300, 300)), coco_gt(gt, size=(300, 300)))
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    # The false box scored higher than the true one: COCO AP = precision 0.5 up to recall 0.5 -> 0.5 * 51 / 101.
    dets = {"a.jpg": [("glass", [0, 0, 100, 100], 0.5), ("glass", [200, 0, 260, 50], 0.8)]}
    m, _ = run(tmp_path, annotation_file(dets, size=(300, 300)), coco_gt(gt, size=(300, 300)))
    assert m["map"] == m["map50"] == round(0.5 * 51 / 101, 4)


def test_images_in_one_file_only_are_reported_and_paths_match_by_suffix(tmp_path, capsys):
    gt = dict(GT, **{"images/val/c.jpg": [("glass", [0, 0, 10, 10])], "only_gt.jpg": []})
    dets = {"a.jpg": [("glass", [0, 0, 100, 100], 0.9)], "b.jpg": [], "c.jpg": [], "only_ann.jpg": []}
    a = annotation_file(dets)
    a["skipped"] = [{"image": "broken.jpg", "reason": "unreadable"}]
    gt["broken.jpg"] = [("can", [0, 0, 5, 5])]
    m, md = run(tmp_path, a, coco_gt(gt))
    assert m["images"] == {"evaluated": 3, "only_in_annotations": ["only_ann.jpg"],
                           "only_in_ground_truth": ["only_gt.jpg"], "skipped_in_annotations": ["broken.jpg"],
                           "size_mismatch": []}
    assert m["recall"] == round(1 / 4, 4)  # a.jpg's glass found; a.jpg's can, b.jpg's and c.jpg's glass missed
    assert "only in annotations (1, not scored): only_ann.jpg" in md
    assert "1 only in the annotations, 1 only in the ground truth, 1 skipped" in capsys.readouterr().out


def test_crowd_regions_are_ignored_not_missed(tmp_path):
    gt = coco_gt({"a.jpg": [("glass", [0, 0, 100, 100])], "crowd.jpg": [("glass", [0, 0, 200, 200])]},
                 crowd={"crowd.jpg"})
    dets = {"a.jpg": [("glass", [0, 0, 100, 100], 0.9)], "crowd.jpg": [("glass", [10, 10, 60, 60], 0.9)]}
    m, _ = run(tmp_path, annotation_file(dets), gt)
    assert (m["map"], m["precision"], m["recall"], m["detections"]) == (1.0, 1.0, 1.0, 1)


def _kept_file():
    """Two images; YOLO finds every glass, RT-DETR a shifted glass and a false can at 0.35."""
    meta = {"conf_threshold": 0.3, "fusion": "wbf", "detector_weights": [1.0, 1.0], "iou_threshold": 0.55}
    kept = {"a.jpg": {"yolo": [{"label": "glass", "bbox": [0, 0, 100, 100], "score": 0.9}],
                      "rtdetr": [{"label": "glass", "bbox": [4, 0, 104, 100], "score": 0.6},
                                 {"label": "can", "bbox": [150, 150, 190, 190], "score": 0.35}]},
            "b.jpg": {"yolo": [{"label": "glass", "bbox": [20, 30, 80, 70], "score": 0.8}], "rtdetr": []}}
    objects = {}
    for name, boxes in kept.items():
        fused = fuse_detections([boxes["yolo"], boxes["rtdetr"]], 200, 200, "wbf", [1, 1], 0.55)
        objects[name] = [(o["label"], o["bbox"], o["score"]) for o in fused]
    return annotation_file(objects, meta=meta, extra={n: {"detector_boxes": k} for n, k in kept.items()})


def test_ensemble_versus_detectors_and_sweep(tmp_path, capsys):
    gt = coco_gt({"a.jpg": [("glass", [0, 0, 100, 100])], "b.jpg": [("glass", [20, 30, 60, 40])]})
    m, md = run(tmp_path, _kept_file(), gt, "--sweep")
    d = m["detectors"]
    assert list(d) == ["yolo", "rtdetr", "yolo + rtdetr wbf", "yolo + rtdetr nms"]
    assert (d["yolo"]["precision"], d["yolo"]["recall"], d["yolo"]["map"]) == (1.0, 1.0, 1.0)
    assert (d["rtdetr"]["precision"], d["rtdetr"]["recall"]) == (0.5, 0.5)
    # Re-fusing the kept boxes with the file's own settings gives exactly the file's objects.
    assert {k: v for k, v in d["yolo + rtdetr wbf"].items() if k != "per_class"} == \
        {k: m[k] for k in d["yolo"] if k != "per_class"}
    assert d["yolo + rtdetr wbf"]["precision"] == round(2 / 3, 4)  # the false can
    assert len(m["sweep"]) == 2 * 3 * 3 * 3
    assert m["sweep"][0]["flags"] == "--fusion wbf --detector_weights 1 1 --iou_threshold 0.55 --conf_threshold 0.3"
    best = m["recommended"]
    assert best["metric"] == "f1" and best["value"] == 1.0 and best["conf_threshold"] == 0.4  # drops the 0.35 can
    # Among the settings as good as it, the one closest to the file's own.
    assert best["flags"] == "--fusion wbf --detector_weights 1 1 --iou_threshold 0.55 --conf_threshold 0.4"
    assert "## Ensemble versus each detector" in md and f"Recommended: `{best['flags']}`" in md
    out = capsys.readouterr().out
    assert "| yolo + rtdetr nms |" in out and f"recommended: {best['flags']}" in out


def test_sweep_below_the_files_threshold_is_refused(tmp_path, capsys):
    a, g = tmp_path / "a.json", tmp_path / "gt.json"
    a.write_text(json.dumps(_kept_file()))
    g.write_text(json.dumps(coco_gt({"a.jpg": [], "b.jpg": []})))
    out = tmp_path / "m.json"
    assert evaluate_annotations.main(["--annotations", str(a), "--ground_truth", str(g), "--output_file", str(out),
                                      "--sweep", "--sweep_conf", "0.5", "0.2"]) == 2
    assert "--sweep_conf 0.2: below the conf_threshold 0.3" in capsys.readouterr().err
    assert not out.exists()


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    a, g = tmp_path / "a.json", tmp_path / "gt.json"
    a.write_text(json.dumps(annotation_file({"a.jpg": []})))
    g.write_text(json.dumps(coco_gt(GT)))
    out = tmp_path / "m.json"
    base = ["--annotations", str(a), "--ground_truth", str(g), "--output_file", str(out)]
    bad_gt = tmp_path / "bad.json"
    bad_gt.write_text(json.dumps({"images": [], "annotations": []}))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(coco_gt({"z.jpg": []})))
    cases = [(base + ["--sweep"], "has no detector_boxes"),
             (base[:2] + ["--ground_truth", str(bad_gt)] + base[4:], "bad.json: categories: missing"),
             (base[:2] + ["--ground_truth", str(other)] + base[4:], "none of the 1 images"),
             (base[:4] + ["--output_file", str(a)], "is the same file as --annotations")]
    for argv, needle in cases:
        assert evaluate_annotations.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not out.with_suffix(".md").exists()
    assert evaluate_annotations.main(base + ["--sweep_weights", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--sweep_weights" in err and len(err.splitlines()) == 1, err
