"""evaluate_annotations.py: pycocotools figures on hand-made cases, the detector table and the sweep."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlm_annotation import evaluate_annotations, label_scoring
from vlm_annotation.engine import fuse_detections
from vlm_annotation.qa_truth import labelled_twice, score_qa


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


def test_confusion_matrix_hand_made_and_written_beside_the_metrics(tmp_path):
    """a.jpg: a glass found, the can called a bottle, a can where nothing is; b.jpg: its glass missed."""
    dets = {"a.jpg": [("glass", [0, 0, 100, 100], 0.9), ("bottle", [100, 100, 150, 180], 0.8),
                      ("can", [0, 150, 40, 190], 0.6)],
            "b.jpg": []}
    m, md = run(tmp_path, annotation_file(dets), coco_gt(GT))
    plots = {k: tmp_path / f"metrics.{k.replace('_json', '')}.{'json' if k.endswith('json') else 'png'}"
             for k in ("pr_curves", "confusion_matrix", "confusion_matrix_json")}
    assert m["plots"] == {k: str(v) for k, v in plots.items()}
    cm = json.loads(plots["confusion_matrix_json"].read_text())
    names = cm["classes"]
    assert sorted(names) == ["background", "bottle", "can", "glass"] and names[-1] == "background"
    assert (cm["rows"], cm["columns"], cm["iou"]) == ("truth", "predicted", 0.5)
    cells = {(names[i], names[j]): v for i, row in enumerate(cm["matrix"]) for j, v in enumerate(row) if v}
    assert cells == {("glass", "glass"): 1, ("can", "bottle"): 1, ("background", "can"): 1,
                     ("glass", "background"): 1}
    for key in ("pr_curves", "confusion_matrix"):
        with Image.open(plots[key]) as im:
            assert im.format == "PNG" and min(im.size) > 100
    assert "![precision-recall curves per class, IoU 0.5](metrics.pr_curves.png)" in md
    assert "![confusion matrix, IoU >= 0.5](metrics.confusion_matrix.png)" in md
    # --plots_dir: the pictures go there instead, the report links them relatively.
    other = tmp_path / "plots"
    m, md = run(tmp_path, annotation_file(dets), coco_gt(GT), "--plots_dir", str(other))
    assert m["plots"]["confusion_matrix"] == str(other / "metrics.confusion_matrix.png")
    assert (other / "metrics.pr_curves.png").is_file() and "](plots/metrics.pr_curves.png)" in md


def test_confusion_matrix_counts_wrong_labels_once_and_ignores_crowd_regions():
    truth = {"a.jpg": {"width": 200, "height": 200, "objects": [
        {"label": "glass", "bbox": [0, 0, 100, 100]}, {"label": "glass", "bbox": [0, 0, 100, 90]}],
        "crowd": [{"label": "can", "bbox": [150, 150, 200, 200]}]}}
    preds = {"a.jpg": [
        {"label": "can", "bbox": [0, 0, 100, 100], "score": 0.9},     # the glass's box: a wrong label
        {"label": "glass", "bbox": [0, 0, 100, 95], "score": 0.5},    # the other glass (own class first)
        {"label": "can", "bbox": [160, 160, 190, 190], "score": 0.7},  # in the crowd region: not counted
        {"label": "can", "bbox": [120, 0, 140, 20], "score": 0.3}]}   # nothing there: background
    cm = label_scoring.confusion_matrix(truth, preds, ["glass", "can", "unused"])
    assert cm["classes"] == ["glass", "can", "background"]
    assert cm["matrix"] == [[1, 1, 0], [0, 0, 0], [0, 1, 0]]


def _cocoeval_precision_at_50(gt: dict, dets: dict, categories: list[str]):
    """pycocotools' own precision array (IoU 0.5, all areas, maxDets 100), built here independently."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    cat = {c["name"]: c["id"] for c in gt["categories"]}
    image = {im["file_name"]: im["id"] for im in gt["images"]}
    results = [{"image_id": image[name], "category_id": cat[label], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
               for name, objs in dets.items() for label, (x1, y1, x2, y2), s in objs]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {**gt, "annotations": [{**a, "area": a["bbox"][2] * a["bbox"][3]} for a in gt["annotations"]]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
    order = [c["id"] for c in gt["categories"]]  # pycocotools sorts its category ids
    return {name: ev.eval["precision"][0, :, sorted(order).index(cat[name]), 0, -1] for name in categories}


def test_pr_curves_are_pycocotools_own_arrays(tmp_path):
    gt = {"a.jpg": [("glass", [0, 0, 100, 100]), ("glass", [100, 100, 100, 100]), ("can", [200, 0, 50, 50])]}
    # The false glass scores above a true one; the can is found: glass precision 0.5 up to recall 0.5, then 0.
    dets = {"a.jpg": [("glass", [0, 0, 100, 100], 0.5), ("glass", [200, 200, 260, 250], 0.8),
                      ("can", [200, 0, 250, 50], 0.7)]}
    coco = coco_gt(gt, size=(300, 300))
    m, _ = run(tmp_path, annotation_file(dets, size=(300, 300)), coco)
    truth = label_scoring.read_coco(tmp_path / "gt.json").images
    preds = {"a.jpg": [{"label": lab, "bbox": box, "score": s} for lab, box, s in dets["a.jpg"]]}
    curves: dict = {}
    label_scoring.coco_evaluate(truth, preds, ["can", "glass"], curves)
    reference = _cocoeval_precision_at_50(coco, dets, ["can", "glass"])
    assert sorted(curves) == ["can", "glass"]
    for name, c in curves.items():
        assert c["recall"] == np.linspace(0.0, 1.0, 101).tolist()  # pycocotools' recThrs
        assert c["precision"] == [float(v) for v in reference[name]]
    # pycocotools' cumulative sums leave 1 - 2e-16 where the hand value is 1: equal to the last bits.
    assert np.allclose(curves["glass"]["precision"], [0.5] * 51 + [0.0] * 50, rtol=0, atol=1e-12)
    assert np.allclose(curves["can"]["precision"], [1.0] * 101, rtol=0, atol=1e-12)
    # Their mean is the AP50 the metrics report.
    assert round(sum(curves["glass"]["precision"]) / 101, 4) == m["per_class"]["glass"]["map50"]
    # No detections at all: a flat 0 for each class with true boxes.
    empty: dict = {}
    label_scoring.coco_evaluate(truth, {}, ["can", "glass", "bottle"], empty)
    assert sorted(empty) == ["can", "glass"] and empty["can"]["precision"] == [0.0] * 101


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
        fused = fuse_detections([boxes["yolo"], boxes["rtdetr"]], ["yolo", "rtdetr"], 200, 200, "wbf", [1, 1], 0.55)
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
    assert {k: v for k, v in d["yolo + rtdetr wbf"].items() if k in m and k != "per_class"} == \
        {k: m[k] for k in d["yolo"] if k in m and k != "per_class"}
    assert d["yolo + rtdetr wbf"]["precision"] == round(2 / 3, 4)  # the false can
    assert len(m["sweep"]) == 2 * 3 * 3 * 3 * 3  # fusion x weights x iou x conf x agnostic_iou
    assert m["sweep"][0]["flags"] == ("--fusion wbf --detector_weights 1 1 --iou_threshold 0.55 --conf_threshold 0.3"
                                      " --agnostic_iou 0")
    best = m["recommended"]
    # By the truth of the Q&A it would teach: the false can makes "How many objects?" wrong in a.jpg (2, truth 1).
    assert best["metric"] == "qa_true" and best["conf_threshold"] == 0.4  # drops the 0.35 can
    assert best["value"] == max(s["qa_true"] for s in m["sweep"])
    # Among the settings as good as it, the one closest to the file's own.
    assert best["flags"] == ("--fusion wbf --detector_weights 1 1 --iou_threshold 0.55 --conf_threshold 0.4"
                             " --agnostic_iou 0")
    assert (d["yolo + rtdetr wbf"]["count_true"], d["yolo"]["count_true"]) == (0.5, 1.0)
    assert m["qa_truth"]["scored"] == 0  # this file has no Q&A of its own
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
             (base[:2] + ["--ground_truth", str(other)] + base[4:], f"the one image of {a} is not in {other}"),
             (base[:4] + ["--output_file", str(a)], "is the same file as --annotation_file")]
    for argv, needle in cases:
        assert evaluate_annotations.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not out.with_suffix(".md").exists()
    assert evaluate_annotations.main(base + ["--sweep_weights", "1,-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--sweep_weights" in err and len(err.splitlines()) == 1, err


# ---- the Q&A scorer (vlm_annotation/qa_truth.py) on hand-made scenes whose truth is known
W, H = 300, 300
# The truth: a can in the top left, a bag in the bottom right, on grass.
TRUTH = {"s.jpg": {"width": W, "height": H, "objects": [{"label": "can", "bbox": [10, 10, 60, 60]},
                                                          {"label": "bag", "bbox": [220, 220, 290, 290]}]}}


def obj(oid, label, box):
    return {"id": oid, "label": label, "bbox": box, "score": 0.9, "sources": ["yolo"], "description": ""}


def qa(qtype, answer, ids=(), question=""):
    return {"question": question, "answer": answer, "type": qtype, "object_ids": list(ids)}


def test_each_type_judged_against_the_truth():
    objects = [obj(0, "can", [12, 10, 60, 58]),          # the can
               obj(1, "plastic", [10, 10, 60, 62]),      # the can again, as plastic: one object, two labels
               obj(2, "bag", [222, 220, 290, 288]),      # the bag
               obj(3, "paper", [120, 120, 160, 160])]    # nothing there
    pairs = [
        qa("count", "There are 4 objects in this image.", [0, 1, 2, 3]),                  # false: 2
        qa("count_class", "There is 1 can in this image.", [0], "How many cans are there?"),  # true
        qa("count_class", "There are no bags in this image.", [], "How many bags are there?"),  # false
        qa("exists", "Yes, there is a plastic in this image.", [1], "Is there a plastic in this image?"),  # false
        qa("exists", "No, there is no glass in this image.", [], "Is there a glass in this image?"),  # true
        qa("location", "The can is on the grass, in the top left of the image.", [0]),    # true
        qa("location", "The can is on the sand, in the top left of the image.", [0]),     # false: surface
        qa("location", "The bag is at the bottom of the image.", [2]),                    # false: bottom right
        qa("location", "The paper is in the centre of the image.", [3]),                  # false: no such object
        qa("surface", "grass", [2], "What is the bag lying on?"),                         # true
        qa("relation", "The can is above the bag.", [0, 2]),                              # false: left of (tie)
        qa("relation", "The bag is to the right of the can.", [2, 0]),                    # true (|dx| >= |dy|)
        qa("region_label", "plastic", [1]),                                               # false: a can
        qa("region_label", "bag", [2]),                                                   # true
        qa("grounding", "<box:0>", [0]),                                                  # true
        qa("grounding", "<box:3>", [3]),                                                  # false
        qa("region_description", "Here is a can.", [0]),                                  # not judged
    ]
    rec = {"image": "s.jpg", "width": W, "height": H, "objects": objects, "qa": pairs}
    result = score_qa({"s.jpg": rec}, TRUTH, {"s.jpg": "grass"}, ["bag", "can", "glass", "paper", "plastic"])
    per = {t: (v["true"], v["scored"]) for t, v in result["per_type"].items()}
    assert per == {"count": (0, 1), "count_class": (1, 2), "exists": (1, 2), "location": (1, 4), "surface": (1, 1),
                   "relation": (1, 2), "region_label": (1, 2), "grounding": (1, 2)}
    assert (result["true"], result["scored"], result["share"]) == (7, 16, round(7 / 16, 4))
    assert (result["labelled_twice"], result["true_objects"]) == (1, 2)


def test_perfect_objects_and_answers_are_all_true_and_surface_unknown_is_not_judged():
    objects = [obj(0, "can", [10, 10, 60, 60]), obj(1, "bag", [220, 220, 290, 290])]
    pairs = [qa("count", "There are 2 objects in this image.", [0, 1]),
             qa("location", "The bag is in the bottom right of the image.", [1]),
             qa("surface", "grass", [1])]
    rec = {"image": "s.jpg", "width": W, "height": H, "objects": objects, "qa": pairs}
    result = score_qa({"s.jpg": rec}, TRUTH)  # no surfaces known
    assert (result["true"], result["scored"], result["labelled_twice"]) == (2, 2, 0)
    assert "surface" not in result["per_type"]


def test_labelled_twice_needs_two_classes_at_iou_half():
    truth = [{"label": "can", "bbox": [0, 0, 100, 100]}]
    assert labelled_twice([obj(0, "can", [0, 0, 100, 100]), obj(1, "can", [0, 0, 90, 100])], truth) == 0
    assert labelled_twice([obj(0, "can", [0, 0, 100, 100]), obj(1, "bag", [0, 0, 100, 40])], truth) == 0  # IoU 0.4
    assert labelled_twice([obj(0, "can", [0, 0, 100, 100]), obj(1, "bag", [0, 0, 100, 50])], truth) == 1  # IoU 0.5


# ---- the runner-up labels of a merged object in the mAP; the agreement rule in the re-fusion and the sweep


def test_label_candidates_are_scored_as_hypotheses_of_their_box(tmp_path, capsys):
    # One can, annotated as plastic (0.5) with can (0.4) as the runner-up of the merge.
    gt = coco_gt({"a.jpg": [("can", [0, 0, 100, 100])]})
    data = annotation_file({"a.jpg": [("plastic", [0, 0, 100, 100], 0.5)]})
    m, _ = run(tmp_path, data, gt)
    assert (m["map50"], m["precision"], m["recall"]) == (0.0, 0.0, 0.0)
    data["images"][0]["objects"][0]["label_candidates"] = [{"label": "can", "score": 0.4}]
    m, _ = run(tmp_path, data, gt)
    # The mAP ranks the can hypothesis of the box: the only can detection, a match.
    assert (m["map50"], m["map"]) == (1.0, 1.0) and m["per_class"]["can"]["map50"] == 1.0
    # Precision and recall count the object under its own label: still a plastic where a can is.
    assert (m["precision"], m["recall"], m["detections"], m["true_positives"]) == (0.0, 0.0, 1, 0)
    # A malformed candidate is refused in one line.
    data["images"][0]["objects"][0]["label_candidates"] = [{"label": "can", "score": 2}]
    a, g = tmp_path / "a.json", tmp_path / "gt.json"
    a.write_text(json.dumps(data))
    assert evaluate_annotations.main(["--annotations", str(a), "--ground_truth", str(g), "--output_file",
                                      str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "images[0].objects[0].label_candidates[0].score: expected a number in [0, 1]" in err
    assert len(err.splitlines()) == 1


def test_agreement_rule_refused_and_swept(tmp_path):
    # One glass. YOLO and RT-DETR both see it at 0.3: below the fusion threshold 0.4, above the agreement
    # threshold 0.2. RT-DETR alone sees a false can at 0.35, which no agreement keeps.
    from vlm_annotation.engine import round_objects
    from vlm_annotation.fusion import fuse
    kept = {"yolo": [{"label": "glass", "bbox": [0, 0, 100, 100], "score": 0.3}],
            "rtdetr": [{"label": "glass", "bbox": [2, 0, 102, 100], "score": 0.3},
                       {"label": "can", "bbox": [150, 150, 190, 190], "score": 0.35}]}
    meta = {"conf_threshold": 0.05, "fusion_conf_threshold": 0.4, "agreement_conf_threshold": 0.2,
            "fusion": "wbf", "detector_weights": [1.0, 1.0], "iou_threshold": 0.55, "agnostic_iou": 0.4,
            "detectors": ["yolo", "rtdetr"]}
    objects = round_objects(fuse([kept["yolo"], kept["rtdetr"]], ["yolo", "rtdetr"], 200, 200, "wbf", [1, 1], 0.55,
                                 0.4, conf=0.4, agree_conf=0.2))
    assert [(o["label"], o["sources"]) for o in objects] == [("glass", ["rtdetr", "yolo"])]
    data = annotation_file({"a.jpg": [(o["label"], o["bbox"], o["score"]) for o in objects]}, meta=meta,
                           extra={"a.jpg": {"detector_boxes": kept}})
    gt = coco_gt({"a.jpg": [("glass", [0, 0, 100, 100])]})
    m, md = run(tmp_path, data, gt, "--sweep", "--sweep_fusion", "wbf", "--sweep_weights", "1,1", "--sweep_iou",
                "0.55", "--sweep_conf", "0.05", "0.4", "--sweep_agnostic_iou", "0.4", "--sweep_agree_conf", "0", "0.2")
    # Re-fused with the file's own agreement threshold: the file's objects.
    assert m["detectors"]["yolo + rtdetr wbf"]["recall"] == m["recall"] == 1.0
    assert m["detectors"]["yolo + rtdetr wbf"]["precision"] == m["precision"] == 1.0
    # The grid: conf 0.05 (agreement below it means nothing), conf 0.4 without and with agreement at 0.2.
    rows = {(s["conf_threshold"], s["agreement_conf_threshold"]): s for s in m["sweep"]}
    assert sorted(rows, key=str) == sorted([(0.05, None), (0.4, None), (0.4, 0.2)], key=str)
    assert rows[(0.4, None)]["recall"] == 0.0 and rows[(0.4, 0.2)]["recall"] == 1.0
    assert rows[(0.05, None)]["precision"] == 0.5  # the false can too
    assert m["recommended"]["agreement_conf_threshold"] == 0.2
    assert m["recommended"]["flags"].endswith("--conf_threshold 0.4 --agnostic_iou 0.4 --agreement_conf_threshold 0.2")
    assert "--agreement_conf_threshold 0.2" in md


# ---- results and report as a set; a closed stdout
REPO = Path(__file__).resolve().parents[1]
# Runs evaluate_annotations.main with the write of the results JSON (the second write) held, so that kill -9
# lands between the report and the JSON; HOLD_FLAG is created when it is there.
HOLD_RUNNER = """
import os, sys, time
import numpy as np
from PIL import Image

from vlm_annotation import evaluate_annotations, label_scoring
from vlm_core import io_utils

def hold(*args, **kwargs):
    open(os.environ["HOLD_FLAG"], "w").close()
    time.sleep(120)
io_utils.write_json_atomic = hold   # the results JSON, written after the report
sys.exit(evaluate_annotations.main(sys.argv[1:]))
"""


def _env(**extra):
    return dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
                **extra)


def test_a_kill_between_report_and_results_is_visible_and_a_rerun_mends_it(tmp_path):
    a, g, out = tmp_path / "a.json", tmp_path / "gt.json", tmp_path / "metrics.json"
    g.write_text(json.dumps(coco_gt(GT)))
    argv = ["--annotations", str(a), "--ground_truth", str(g), "--output_file", str(out)]
    a.write_text(json.dumps(annotation_file({"a.jpg": [("glass", [0, 0, 100, 100], 0.9)], "b.jpg": []})))
    assert evaluate_annotations.main(argv) == 0
    assert evaluate_annotations.report_is_current(out)
    old_json, old_md = out.read_text(), out.with_suffix(".md").read_text()
    assert json.loads(old_json)["report"]["file"] == "metrics.md"
    # Other annotations, other figures; the run is killed between the report and the JSON.
    a.write_text(json.dumps(annotation_file({"a.jpg": [("can", [0, 0, 100, 100], 0.9)], "b.jpg": []})))
    flag = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_RUNNER, *argv], cwd=REPO, env=_env(HOLD_FLAG=str(flag)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the run never reached the write of the JSON"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The new report beside the old JSON: the JSON's hash names another report, so a reader can tell.
    assert out.read_text() == old_json and out.with_suffix(".md").read_text() != old_md
    assert not evaluate_annotations.report_is_current(out)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    # The same command again writes both.
    assert evaluate_annotations.main(argv) == 0
    assert evaluate_annotations.report_is_current(out)
    assert json.loads(out.read_text())["map"] == 0.0


def test_a_closed_stdout_is_no_traceback(tmp_path):
    # `evaluate_annotations.py ... | head`: the reader has gone before the first line is printed.
    a, g, out = tmp_path / "a.json", tmp_path / "gt.json", tmp_path / "metrics.json"
    a.write_text(json.dumps(_kept_file()))
    g.write_text(json.dumps(coco_gt({"a.jpg": [("glass", [0, 0, 100, 100])], "b.jpg": []})))
    proc = subprocess.Popen([sys.executable, "vlm_annotation/evaluate_annotations.py", "--annotations", str(a),
                             "--ground_truth", str(g), "--output_file", str(out)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert evaluate_annotations.report_is_current(out)
