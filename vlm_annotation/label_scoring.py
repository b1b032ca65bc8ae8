"""Scoring auto-labels against ground truth: COCO mAP through pycocotools (:func:`coco_evaluate`),
precision / recall / F1 at IoU 0.5, each detector alone against the fusions, and the fusion sweep;
the pictures of those figures: per-class precision-recall curves (pycocotools' own arrays, IoU 0.5) and
a confusion matrix (objects matched to true objects at IoU >= 0.5, with a background row and column).
The engine of evaluate_annotations.py; world/report.py scores the world's labels with it too.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from vlm_annotation.detectors import DETECTOR_NAMES, ClassMap
from vlm_annotation.label_readers import LabelSet, read_coco, read_yolo
from vlm_core.boxes import iou
from vlm_core.schema import AnnotationError, validate_bbox

PR_IOU = 0.5  # the IoU at which precision and recall count a match
MATCH_IOU = PR_IOU  # an object matches a true object at this IoU (the gallery's verdicts, the confusion matrix)
BACKGROUND = "background"  # the confusion matrix's row of false positives and column of misses


SWEEP_METRICS = ("qa_true", "count_true", "f1", "map", "map50")


def load_ground_truth(path: str | Path, images_dir: str | Path | None = None,
                      class_map: ClassMap | None = None) -> LabelSet:
    """COCO json, or an Ultralytics data.yaml (``.yaml`` / ``.yml``)."""
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        return read_yolo(path, images_dir, class_map)
    return read_coco(path, class_map)


def check_detector_boxes(data: dict, file) -> list[str]:
    """The detectors whose boxes every image record keeps in ``detector_boxes`` (in the order of the file's
    ``meta.detectors``, else of its first record), checked field by field; [] when a record has none."""
    records = data["images"]
    if not records or not all("detector_boxes" in r for r in records):
        return []
    first = records[0]["detector_boxes"]
    names = list(data.get("meta", {}).get("detectors") or (first if isinstance(first, dict) else DETECTOR_NAMES))
    for i, rec in enumerate(records):
        kept = rec["detector_boxes"]
        where = f"images[{i}].detector_boxes"
        if not isinstance(kept, dict) or sorted(kept) != sorted(names) or not names:
            raise AnnotationError(file, where, f"expected an object with the lists {', '.join(names)}")
        for name, dets in kept.items():
            if not isinstance(dets, list):
                raise AnnotationError(file, f"{where}.{name}", "expected a list")
            for k, d in enumerate(dets):
                path = f"{where}.{name}[{k}]"
                if not isinstance(d, dict) or not isinstance(d.get("label"), str):
                    raise AnnotationError(file, path, "expected {label, bbox, score}")
                validate_bbox(d.get("bbox"), rec["width"], rec["height"], file, f"{path}.bbox")
                score = d.get("score")
                if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0 <= score <= 1:
                    raise AnnotationError(file, f"{path}.score", "expected a number in [0, 1]")
    return names


def check_label_candidates(data: dict, file) -> None:
    """Each object's ``label_candidates`` (optional: runner-up labels of a merged object), which the mAP scores
    as detections: a list of ``{"label": non-empty str, "score": number in [0, 1]}``."""
    for i, rec in enumerate(data["images"]):
        for k, obj in enumerate(rec["objects"]):
            candidates = obj.get("label_candidates", [])
            path = f"images[{i}].objects[{k}].label_candidates"
            if not isinstance(candidates, list):
                raise AnnotationError(file, path, "expected a list of {label, score}")
            for j, c in enumerate(candidates):
                score = c.get("score") if isinstance(c, dict) else None
                if not isinstance(c, dict) or not isinstance(c.get("label"), str) or not c["label"]:
                    raise AnnotationError(file, f"{path}[{j}]", "expected {label, score} with a non-empty label")
                if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0 <= score <= 1:
                    raise AnnotationError(file, f"{path}[{j}].score", "expected a number in [0, 1]")


def match_images(predicted: list[str], truth: list[str]) -> dict[str, str]:
    """Annotation image name -> ground-truth name: equal paths, else the unique one that ends with the
    other (``images/val/a.jpg`` and ``a.jpg``: the two files may count paths from different folders)."""
    truth_set = set(truth)
    matched = {p: p for p in predicted if p in truth_set}
    by_suffix: dict[str, list[str]] = {}
    for t in truth:
        parts = t.split("/")
        for k in range(1, len(parts)):
            by_suffix.setdefault("/".join(parts[k:]), []).append(t)
    used = set(matched.values())
    for p in predicted:
        if p in matched:
            continue
        parts = p.split("/")
        candidates = set(by_suffix.get(p, [])) | {"/".join(parts[k:]) for k in range(1, len(parts))} & truth_set
        candidates -= used
        if len(candidates) == 1:
            matched[p] = candidates.pop()
            used.add(matched[p])
    return matched


def coco_evaluate(truth: dict[str, dict], predictions: dict[str, list[dict]], categories: list[str],
                  curves: dict | None = None) -> dict:
    """pycocotools' bbox evaluation of ``predictions`` (image -> [{label, bbox, score}]) against ``truth``
    (image -> {width, height, objects, crowd}): overall and per-class map, map50, precision, recall.
    ``curves``, when given, is filled with each class's precision-recall curve (:func:`pr_curves`).

    An object's ``label_candidates`` (the runner-up labels that the cross-class merge of
    :func:`vlm_annotation.fusion.merge_across_classes` kept, each with its fused score) are class
    hypotheses of that box: the COCO results that ``map`` and ``map50`` rank list each as one more
    detection of the same box, at its own score and with its own label. This is how COCO scores any
    detector that gives one box several labels (RT-DETR's top-k over queries x classes does), so the
    merge changes what the annotation teaches (one object, one label) without hiding from the mAP the
    hypotheses that the file still stores. ``precision``, ``recall``, ``f1``, ``detections`` and
    ``true_positives`` count the objects only (their own label): they measure the labels as training
    data, where an object has one label.
    """
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cat_id = {n: i for i, n in enumerate(categories, start=1)}
    names = sorted(truth)
    gt = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}
    dets = []
    hypotheses: set[int] = set()  # result ids of runner-up labels: in the mAP, not in precision / recall
    for image_id, name in enumerate(names, start=1):
        entry = truth[name]
        gt["images"].append({"id": image_id, "file_name": name, "width": entry["width"], "height": entry["height"]})
        for crowd, objects in ((0, entry["objects"]), (1, entry.get("crowd", []))):
            for o in objects:
                x1, y1, x2, y2 = o["bbox"]
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id,
                                          "category_id": cat_id[o["label"]], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                          "area": (x2 - x1) * (y2 - y1), "iscrowd": crowd})
        for o in predictions.get(name, []):
            x1, y1, x2, y2 = o["bbox"]
            for k, (label, score) in enumerate([(o["label"], o["score"])] + [
                    (c["label"], c["score"]) for c in o.get("label_candidates", ())]):
                if k:  # pycocotools numbers the results 1, 2, ... in this order
                    hypotheses.add(len(dets) + 1)
                dets.append({"image_id": image_id, "category_id": cat_id[label],
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets) if dets else None
        ev = None
        if coco_dt is not None:
            ev = COCOeval(coco_gt, coco_dt, "bbox")
            ev.evaluate()
            ev.accumulate()
    counts = {c: {"tp": 0, "fp": 0, "gt": 0, "det": 0} for c in cat_id.values()}
    if ev is not None:
        t = int(np.argmin(np.abs(ev.params.iouThrs - PR_IOU)))
        for e in ev.evalImgs:
            if e is None or e["aRng"] != ev.params.areaRng[0]:
                continue
            c = counts[e["category_id"]]
            own = np.array([d not in hypotheses for d in e["dtIds"]], dtype=bool)
            kept = ~e["dtIgnore"][t].astype(bool) & own
            matched = e["dtMatches"][t] > 0
            c["tp"] += int((matched & kept).sum())
            c["fp"] += int((~matched & kept).sum())
            c["det"] += int(kept.sum())
    for a in gt["annotations"]:
        if not a["iscrowd"]:
            counts[a["category_id"]]["gt"] += 1

    def ap(k: int | None, t: slice | int) -> float | None:
        """Mean of pycocotools' precision array over IoUs ``t``, recalls and classes (one class: ``k``),
        for all areas and maxDets 100, as its own summary does; None where no class has ground truth."""
        if ev is None:  # no detections at all: AP 0 wherever there is something to find
            n = sum(c["gt"] for c in counts.values()) if k is None else counts[k + 1]["gt"]
            return 0.0 if n else None
        p = ev.eval["precision"][t, :, :, 0, -1] if k is None else ev.eval["precision"][t, :, k, 0, -1]
        p = p[p > -1]
        return _r(float(p.mean())) if p.size else None

    def figures(cs: list[dict], k: int | None) -> dict:
        tp, fp, n_gt = (sum(c[key] for c in cs) for key in ("tp", "fp", "gt"))
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / n_gt if n_gt else None
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"map": ap(k, slice(None)), "map50": ap(k, 0), "precision": _r(precision), "recall": _r(recall),
                "f1": _r(f1), "detections": tp + fp, "ground_truth_boxes": n_gt, "true_positives": tp}

    # Classes with neither boxes nor detections (a category nobody used) say nothing: left out.
    per_class = {n: figures([counts[i]], i - 1) for n, i in cat_id.items() if counts[i]["gt"] or counts[i]["det"]}
    if curves is not None:
        curves.update(pr_curves(ev, categories, {n: counts[i]["gt"] for n, i in cat_id.items()}))
    return {**figures(list(counts.values()), None), "per_class": per_class}


def pr_curves(ev, categories: list[str], n_truth: dict[str, int]) -> dict[str, dict]:
    """Each class's precision-recall curve at IoU 0.5, as pycocotools interpolates it for its AP: precision
    at its 101 recall thresholds (all areas, maxDets 100). Classes without true boxes have no curve (their
    recall is undefined); ``ev`` None (no detections at all): precision 0 at every recall."""
    import numpy as np
    from pycocotools.cocoeval import Params

    recalls = (ev.params.recThrs if ev is not None else Params(iouType="bbox").recThrs).tolist()
    out = {}
    for k, name in enumerate(categories):
        if not n_truth.get(name):
            continue
        if ev is None:
            precision = [0.0] * len(recalls)
        else:
            t = int(np.argmin(np.abs(ev.params.iouThrs - PR_IOU)))
            # pycocotools writes -1 past the highest recall reached; a curve shows 0 there.
            precision = [max(0.0, float(v)) for v in ev.eval["precision"][t, :, k, 0, -1]]
        out[name] = {"recall": recalls, "precision": precision}
    return out


@dataclass
class Verdict:
    """How one image's objects compare with its true objects."""
    status: dict[int, str]                    # object id -> "ok" | "false positive" | "wrong label"
    truth_label: dict[int, str]               # object id -> the true class (wrong labels)
    missed: list[int]                         # indices of the true objects no object matches

    @property
    def counts(self) -> dict[str, int]:
        values = list(self.status.values())
        return {"false positives": values.count("false positive"), "wrong labels": values.count("wrong label"),
                "misses": len(self.missed)}

    @property
    def errors(self) -> int:
        return sum(self.counts.values())


def compare_to_truth(objects: list[dict], truth: list[dict], iou_thr: float = MATCH_IOU) -> Verdict:
    """Match objects to true objects, one to one, greedily by score: each object takes the free true object
    it overlaps most at IoU >= ``iou_thr``, of its own class first (ok), then of any class (wrong label);
    objects left are false positives, true objects left are misses."""
    order = sorted(objects, key=lambda o: (-o["score"], o["id"]))
    taken: set[int] = set()
    status: dict[int, str] = {}
    truth_label: dict[int, str] = {}
    for same_class in (True, False):
        for o in order:
            if o["id"] in status:
                continue
            best, best_iou = None, iou_thr
            for k, t in enumerate(truth):
                if k in taken or (same_class and t["label"] != o["label"]):
                    continue
                value = iou(o["bbox"], t["bbox"])
                if value >= best_iou:
                    best, best_iou = k, value
            if best is not None:
                taken.add(best)
                status[o["id"]] = "ok" if same_class else "wrong label"
                if not same_class:
                    truth_label[o["id"]] = truth[best]["label"]
    for o in objects:
        status.setdefault(o["id"], "false positive")
    return Verdict(status, truth_label, [k for k in range(len(truth)) if k not in taken])


def _in_crowd(box, crowd: list[dict]) -> bool:
    """Whether a box lies mostly (half its area or more) inside a crowd region, which COCO ignores."""
    area = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
    for c in crowd:
        cx1, cy1, cx2, cy2 = c["bbox"]
        inter = max(0.0, min(box[2], cx2) - max(box[0], cx1)) * max(0.0, min(box[3], cy2) - max(box[1], cy1))
        if area and inter / area >= 0.5:
            return True
    return False


def confusion_matrix(truth: dict[str, dict], predictions: dict[str, list[dict]], categories: list[str],
                     iou_thr: float = MATCH_IOU) -> dict:
    """Rows: the true class; columns: the predicted class; both end with ``background``. Each image's objects
    are matched to its true objects by :func:`compare_to_truth` (IoU >= ``iou_thr``, own class first, one to
    one); an object matching nothing counts in the background row (a false positive), a true object nothing
    matches in the background column (a miss). Objects lying in a crowd region (COCO's ignore regions) that
    match nothing are not counted, as COCO does not count them. Classes nobody used are left out."""
    classes = [c for c in categories if any(o["label"] == c for e in truth.values() for o in e["objects"])
               or any(o["label"] == c for objs in predictions.values() for o in objs)]
    names = classes + [BACKGROUND]
    index = {c: k for k, c in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    bg = index[BACKGROUND]
    for name, entry in truth.items():
        true = entry["objects"]
        objects = [{**o, "id": k} for k, o in enumerate(predictions.get(name, []))]
        verdict = compare_to_truth(objects, true, iou_thr)
        for o in objects:
            status = verdict.status[o["id"]]
            if status == "ok":
                matrix[index[o["label"]]][index[o["label"]]] += 1
            elif status == "wrong label":
                matrix[index[verdict.truth_label[o["id"]]]][index[o["label"]]] += 1
            elif not _in_crowd(o["bbox"], entry.get("crowd", [])):
                matrix[bg][index[o["label"]]] += 1
        for k in verdict.missed:
            matrix[index[true[k]["label"]]][bg] += 1
    return {"iou": iou_thr, "rows": "truth", "columns": "predicted", "classes": names, "matrix": matrix}


def _or(v: float | None, default: float = -1.0) -> float:
    return default if v is None else v


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _table(rows: list[tuple[str, dict]], first: str) -> list[str]:
    cols = ("map", "map50", "precision", "recall", "f1", "detections", "ground_truth_boxes")
    if any("qa_true" in m for _, m in rows):  # the Q&A truth figures, where the rows have them
        cols += ("qa_true", "count_true", "labelled_twice")
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    lines += [f"| {name} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |" for name, m in rows]
    return lines


def comparison_rows(result: dict) -> list[tuple[str, dict]]:
    """The file's own objects, then each detector alone and each fusion of the two."""
    own = dict(result)
    if "qa_truth" in result:  # the file's own Q&A (with its captions), judged like the other rows' generated Q&A
        q = result["qa_truth"]
        own.update(qa_true=q["share"], count_true=q["per_type"].get("count", {}).get("share"),
                   labelled_twice=q["labelled_twice"])
    return [(f"annotation file ({result['fusion'] or 'its objects'})", own), *result["detectors"].items()]


def markdown(result: dict, report_dir: str | Path | None = None) -> str:
    """The report; ``report_dir``: the report's folder, which its picture links are relative to."""
    lines = [f"# Annotations vs ground truth: {result['annotations']} vs {result['ground_truth']}", "",
             f"{result['images']['evaluated']} images; precision/recall at IoU {PR_IOU}, "
             f"conf_threshold {_fmt(result['conf_threshold'])}.", ""]
    lines += _table([("all", result)] + list(result["per_class"].items()), "class") + [""]
    if "plots" in result:
        def link(path: str) -> str:
            return Path(os.path.relpath(path, report_dir)).as_posix() if report_dir is not None else path
        plots = result["plots"]
        lines += [f"![precision-recall curves per class, IoU 0.5]({link(plots['pr_curves'])})",
                  f"![confusion matrix, IoU >= {MATCH_IOU:g}]({link(plots['confusion_matrix'])}) "
                  f"(counts: `{link(plots['confusion_matrix_json'])}`)", ""]
    if "detectors" in result:
        lines += ["## Ensemble versus each detector", ""]
        lines += _table(comparison_rows(result), "boxes") + [""]
    if "qa_truth" in result:
        q = result["qa_truth"]
        lines += ["## The Q&A against the truth", "",
                  f"Answers true of the scene: {q['true']} of {q['scored']} ({_fmt(q['share'])}); true objects "
                  f"labelled twice (matched by objects of two classes): {q['labelled_twice']} of "
                  f"{q['true_objects']} ({_fmt(q['labelled_twice_share'])}).", "",
                  "| type | true | scored | share |", "|---|---|---|---|"]
        lines += [f"| {t} | {v['true']} | {v['scored']} | {_fmt(v['share'])} |" for t, v in q["per_type"].items()]
        lines += [""]
    if "sweep" in result:
        best = result["recommended"]
        lines += [f"## Sweep ({len(result['sweep'])} settings, best {best['metric']} first)", ""]
        rows = sorted(result["sweep"], key=lambda s: -(s[best["metric"]] or 0))[:10]
        lines += _table([(s["flags"], s) for s in rows], "setting") + [""]
        lines += [f"Recommended: `{best['flags']}` ({best['metric']} {_fmt(best['value'])})", ""]
    im = result["images"]
    for key in ("only_in_annotations", "only_in_ground_truth", "skipped_in_annotations", "size_mismatch"):
        if im[key]:
            lines.append(f"- {key.replace('_', ' ')} ({len(im[key])}, not scored): " + ", ".join(im[key][:20])
                         + (" ..." if len(im[key]) > 20 else ""))
    return "\n".join(lines).rstrip() + "\n"


def _flags(fusion: str, weights, iou: float, conf: float, agnostic_iou: float | None = None,
           agreement_conf: float | None = None) -> str:
    text = (f"--fusion {fusion} --detector_weights {' '.join(f'{w:g}' for w in weights)} "
            f"--iou_threshold {iou:g} --conf_threshold {conf:g}")
    text = text if agnostic_iou is None else f"{text} --agnostic_iou {agnostic_iou:g}"
    return text if agreement_conf is None else f"{text} --agreement_conf_threshold {agreement_conf:g}"
