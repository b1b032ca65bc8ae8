"""Fuse the boxes of several detectors: Weighted Boxes Fusion (default) or NMS.

Pure Python, no ``ensemble_boxes`` (it calls ``exit()`` on malformed input). The WBF
here follows ``ensemble_boxes.weighted_boxes_fusion`` with ``conf_type="avg"``:

* boxes are normalized to 0..1 of the image, clipped, and zero-area ones dropped;
* per label, boxes (score x model weight) are visited by descending score; a box joins
  the cluster whose current fused box overlaps it with IoU > ``iou_thr``, else starts one;
* a fused box is the score-weighted mean of its cluster, its score the mean of the
  weighted scores, rescaled by ``min(n_models, n_boxes) / sum(weights)``; so a box that
  only one of two equally weighted models found keeps half its score.

Per-class fusion (as ``ensemble_boxes`` does) keeps one object twice when two detectors disagree on
its class ("can" from one, "plastic" from the other). :func:`merge_across_classes` then merges, class
agnostically, fused objects of *different* classes whose boxes overlap with IoU > ``agnostic_iou``: one
object, labelled by the vote of the detectors (each label's fused score, which is already the
score-weighted vote of the detectors that said it), its box and score the winning label's, and the losing
labels kept as ``label_candidates`` for review (evaluate_annotations.py scores them in the mAP as further
detections of the box).

Which boxes are fused at all (:func:`select_boxes`): those scoring above ``conf``, and, with ``agree_conf``,
also those above that lower bar that a box of *another* detector (above it too, any class) overlaps with
IoU > ``agree_iou``: two detectors finding the same object is evidence that one alone scoring as low is
not. Measured on the world's held-out scenes (the issue-23 note): most count errors were objects that
neither detector scored above the fusion threshold.

A detection is a dict ``{"label": str, "bbox": [x1, y1, x2, y2] pixels, "score": float}``;
a fused object adds ``"sources"``: the sorted names of the detectors in its cluster (and, when it
merged several classes, ``"label_candidates"``: ``[{"label", "score"}]``, best first).
"""
from __future__ import annotations

from typing import Sequence

from vlm_core.boxes import box_area, clip_box, iou, normalized_to_pixel, pixel_to_normalized

FUSION_METHODS = ("wbf", "nms")
# Measured on 60 held-out world scenes with the committed detectors (the demo's flags): from 0.6 up some
# objects stay labelled twice; 0.4 leaves none and gives the most true answers (see the issue-23 note); 0.3
# merges a few more but lowers mAP50 (0.816 -> 0.804 on those scenes, label candidates counted).
DEFAULT_AGNOSTIC_IOU = 0.4


def _prefilter(detections_per_model: Sequence[Sequence[dict]], names: Sequence[str],
               weights: Sequence[float], width: float, height: float, skip_box_thr: float) -> dict:
    """Boxes grouped by label, normalized and clipped, each sorted by weighted score (desc)."""
    by_label: dict[str, list[dict]] = {}
    for model_idx, dets in enumerate(detections_per_model):
        for det in dets:
            score = float(det["score"])
            if score < skip_box_thr:
                continue
            # 0..1 of the image (what WBF averages in), corners ordered and clipped to the unit square.
            box = clip_box(pixel_to_normalized([float(v) for v in det["bbox"]], width, height), 1.0, 1.0)
            if box_area(box) <= 0.0:
                continue
            by_label.setdefault(det["label"], []).append(
                {"score": score * weights[model_idx], "weight": float(weights[model_idx]),
                 "source": names[model_idx], "box": box})
    for boxes in by_label.values():
        # Stable sort: ties keep model order, then the detector's own order.
        boxes.sort(key=lambda b: -b["score"])
    return by_label


def _weighted_box(cluster: list[dict]) -> dict:
    conf = sum(b["score"] for b in cluster)
    if conf > 0:
        box = [sum(b["score"] * b["box"][k] for b in cluster) / conf for k in range(4)]
    else:  # all scores zero: a plain mean
        box = [sum(b["box"][k] for b in cluster) / len(cluster) for k in range(4)]
    return {"box": box, "score": conf / len(cluster)}


def _best_match(fused: list[dict], box: Sequence[float], iou_thr: float) -> int:
    best, best_iou = -1, iou_thr
    for i, f in enumerate(fused):
        value = iou(f["box"], box)
        if value > best_iou:
            best, best_iou = i, value
    return best


def _to_pixels(label: str, box: Sequence[float], score: float, sources, width: float, height: float) -> dict:
    return {"label": label,
            "bbox": normalized_to_pixel(box, width, height),
            "score": min(max(score, 0.0), 1.0),
            "sources": sorted(set(sources))}


def _model_weights(detections_per_model: Sequence[Sequence[dict]], weights: Sequence[float] | None) -> list[float]:
    """One weight per model, 1 each by default. The stages check ``--detector_weights`` where the flag is
    declared (one per detector, none negative, not all zero), so they are trusted here."""
    return [1.0] * len(detections_per_model) if weights is None else [float(w) for w in weights]


def _sort_fused(objects: list[dict]) -> list[dict]:
    # Deterministic order: best first, ties broken by position and label.
    return sorted(objects, key=lambda o: (-o["score"], o["bbox"][1], o["bbox"][0], o["label"]))


def weighted_boxes_fusion(detections_per_model: Sequence[Sequence[dict]], names: Sequence[str],
                          width: float, height: float, weights: Sequence[float] | None = None,
                          iou_thr: float = 0.55, skip_box_thr: float = 0.0) -> list[dict]:
    """Fuse the detections of several models (one list per model) into objects."""
    weights = _model_weights(detections_per_model, weights)
    n_models = len(detections_per_model)
    objects = []
    for label, boxes in _prefilter(detections_per_model, names, weights, width, height, skip_box_thr).items():
        clusters: list[list[dict]] = []
        fused: list[dict] = []
        for b in boxes:
            idx = _best_match(fused, b["box"], iou_thr)
            if idx == -1:
                clusters.append([b])
                fused.append({"box": list(b["box"]), "score": b["score"]})
            else:
                clusters[idx].append(b)
                fused[idx] = _weighted_box(clusters[idx])
        for cluster, f in zip(clusters, fused):
            score = f["score"] * min(n_models, len(cluster)) / sum(weights)
            objects.append(_to_pixels(label, f["box"], score, [b["source"] for b in cluster], width, height))
    return _sort_fused(objects)


def non_maximum_suppression(detections_per_model: Sequence[Sequence[dict]], names: Sequence[str],
                            width: float, height: float, weights: Sequence[float] | None = None,
                            iou_thr: float = 0.55, skip_box_thr: float = 0.0) -> list[dict]:
    """Per-label NMS over the pooled detections of all models.

    Scores are ranked as ``score x weight / max(weights)`` (equal weights leave them as
    they are); a kept box records as ``sources`` every model whose box it suppressed.
    """
    weights = _model_weights(detections_per_model, weights)
    top = max(weights)
    unit = [w / top for w in weights]
    objects = []
    for label, boxes in _prefilter(detections_per_model, names, unit, width, height, skip_box_thr).items():
        kept: list[tuple[dict, list[str]]] = []
        for b in boxes:
            for k, sources in kept:
                if iou(k["box"], b["box"]) > iou_thr:
                    sources.append(b["source"])
                    break
            else:
                kept.append((b, [b["source"]]))
        for b, sources in kept:
            objects.append(_to_pixels(label, b["box"], b["score"], sources, width, height))
    return _sort_fused(objects)


def merge_across_classes(objects: Sequence[dict], iou_thr: float) -> list[dict]:
    """Merge fused objects of different classes that overlap with IoU > ``iou_thr`` into one object each.

    Objects are visited best first; one joins the group whose first (best) object overlaps it most,
    among the groups that hold no object of its class yet (two objects of one class were kept apart by
    the per-class fusion on purpose: two cans side by side stay two cans). A group of one is kept as it
    is. A group of several becomes one object: the label with the highest fused score (ties: the
    group's first), that label's score and box, every source, and the other labels as
    ``label_candidates`` (``{"label", "score"}``, best first). The winner's box rather than a mean of
    the group's: the detectors that voted for the label placed it, and on 60 held-out world scenes it
    scores as high or higher (mAP50 0.832 vs 0.827, F1 0.861 vs 0.856 at ``--iou_threshold 0.4
    --fusion_conf_threshold 0.4``; equal at the demo's flags).
    """
    groups: list[list[dict]] = []
    for obj in sorted(objects, key=lambda o: (-o["score"], o["bbox"][1], o["bbox"][0], o["label"])):
        best, best_iou = None, iou_thr
        for group in groups:
            if any(o["label"] == obj["label"] for o in group):
                continue
            value = iou(group[0]["bbox"], obj["bbox"])
            if value > best_iou:
                best, best_iou = group, value
        if best is None:
            groups.append([obj])
        else:
            best.append(obj)
    merged = []
    for group in groups:
        if len(group) == 1:
            merged.append(group[0])
            continue
        # One object per label in a group, so a label's vote is its object's fused score; sorted() is
        # stable, so a tie goes to the group's first (best-scoring) object.
        ranked = sorted(group, key=lambda o: -o["score"])
        merged.append({"label": ranked[0]["label"], "bbox": list(ranked[0]["bbox"]), "score": ranked[0]["score"],
                       "sources": sorted({s for o in group for s in o["sources"]}),
                       "label_candidates": [{"label": o["label"], "score": o["score"]} for o in ranked[1:]]})
    return _sort_fused(merged)


def select_boxes(detections_per_model: Sequence[Sequence[dict]], conf: float | None,
                 agree_conf: float | None = None, agree_iou: float = DEFAULT_AGNOSTIC_IOU) -> list[list[dict]]:
    """The detections that are fused: those scoring above ``conf`` (None: all), and, when ``agree_conf`` is
    given, those scoring above it that a detection of another model scoring above it overlaps with IoU >
    ``agree_iou``, whatever the two classes (a box both detectors found passes a lower bar than a box only
    one found). Boxes are compared in pixels as given; each model's order is kept."""
    if agree_conf is None or (conf is not None and agree_conf >= conf):
        return [[d for d in dets if conf is None or d["score"] > conf] for dets in detections_per_model]
    low = [[d for d in dets if d["score"] > agree_conf] for dets in detections_per_model]
    out = []
    for i, dets in enumerate(low):
        others = [o for j, other in enumerate(low) if j != i for o in other]
        out.append([d for d in dets if (conf is None or d["score"] > conf)
                    or any(iou(d["bbox"], o["bbox"]) > agree_iou for o in others)])
    return out


def fuse(detections_per_model, names, width, height, method: str = "wbf", weights=None,
         iou_thr: float = 0.55, agnostic_iou: float | None = None, conf: float | None = None,
         agree_conf: float | None = None, agree_iou: float | None = None) -> list[dict]:
    """:func:`select_boxes` (when ``conf`` or ``agree_conf`` is given; ``agree_iou`` defaults to
    ``agnostic_iou``, else :data:`DEFAULT_AGNOSTIC_IOU`), per-class ``method`` fusion, then (when
    ``agnostic_iou`` is given) :func:`merge_across_classes`."""
    if conf is not None or agree_conf is not None:
        agree_iou = agree_iou if agree_iou is not None else agnostic_iou or DEFAULT_AGNOSTIC_IOU
        detections_per_model = select_boxes(detections_per_model, conf, agree_conf, agree_iou)
    if method == "wbf":
        objects = weighted_boxes_fusion(detections_per_model, names, width, height, weights, iou_thr)
    elif method == "nms":
        objects = non_maximum_suppression(detections_per_model, names, width, height, weights, iou_thr)
    else:
        raise ValueError(f"unknown fusion method {method!r} (choose from {', '.join(FUSION_METHODS)})")
    return objects if agnostic_iou is None else merge_across_classes(objects, agnostic_iou)
