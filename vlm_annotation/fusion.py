"""Fuse the boxes of several detectors: Weighted Boxes Fusion (default) or NMS.

Pure Python, no ``ensemble_boxes`` (it calls ``exit()`` on malformed input). The WBF
here follows ``ensemble_boxes.weighted_boxes_fusion`` with ``conf_type="avg"``:

* boxes are normalized to 0..1 of the image, clipped, and zero-area ones dropped;
* per label, boxes (score x model weight) are visited by descending score; a box joins
  the cluster whose current fused box overlaps it with IoU > ``iou_thr``, else starts one;
* a fused box is the score-weighted mean of its cluster, its score the mean of the
  weighted scores, rescaled by ``min(n_models, n_boxes) / sum(weights)``; so a box that
  only one of two equally weighted models found keeps half its score.

A detection is a dict ``{"label": str, "bbox": [x1, y1, x2, y2] pixels, "score": float}``;
a fused object adds ``"sources"``: the sorted names of the detectors in its cluster.
"""
from __future__ import annotations

from typing import Sequence

from vlm_core.boxes import box_area, clip_box, iou, normalized_to_pixel, pixel_to_normalized

FUSION_METHODS = ("wbf", "nms")


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


def fuse(detections_per_model, names, width, height, method: str = "wbf", weights=None,
         iou_thr: float = 0.55) -> list[dict]:
    if method == "wbf":
        return weighted_boxes_fusion(detections_per_model, names, width, height, weights, iou_thr)
    if method == "nms":
        return non_maximum_suppression(detections_per_model, names, width, height, weights, iou_thr)
    raise ValueError(f"unknown fusion method {method!r} (choose from {', '.join(FUSION_METHODS)})")
