"""Measure an annotation file against ground truth: COCO mAP, precision and recall, per class.

    python vlm_annotation/evaluate_annotations.py --annotations annotations.json \\
        --ground_truth ground_truth.json --output_file label_metrics.json

    # ensemble versus each detector, and the best fusion settings for this data
    python vlm_annotation/data_annotation.py ... --keep_detector_boxes --output_file annotations.json
    python vlm_annotation/evaluate_annotations.py --annotations annotations.json \\
        --ground_truth ground_truth.json --output_file label_metrics.json --sweep

Ground truth is a COCO json or an Ultralytics ``data.yaml`` (read by ``import_labels.py``'s
readers: COCO ``iscrowd`` regions are "ignore" regions, as in COCO's own evaluation).
``pycocotools`` computes everything: ``map`` is COCO's AP@[.5:.95] (maxDets 100), ``map50`` its
AP@.5; ``precision`` and ``recall`` count pycocotools' IoU-0.5 matches over every object of the
file, i.e. at the file's own confidence threshold (``meta.conf_threshold``: the detectors kept
boxes scoring above it before fusion; ``--conf_threshold`` keeps only objects scoring above a
higher one). Per class, a class of the annotations that the ground truth lacks has no AP (its
objects count as false positives). Images present in only one of the two files are listed,
never silently dropped from the report (they are left out of the figures).

With ``detector_boxes`` in the file (``data_annotation.py --keep_detector_boxes``), the table
also scores YOLO alone, RT-DETR alone and both fusions (WBF and NMS), fused by the very
functions data_annotation.py uses (from the boxes above the file's ``fusion_conf_threshold``
when it has one, as its objects were); ``--sweep`` scores a grid of ``--fusion``,
``--detector_weights``, ``--iou_threshold`` and ``--conf_threshold`` from the kept boxes
(no detector runs) and recommends the setting with the best ``--sweep_metric``.

Writes ``--output_file`` (JSON) and a markdown table beside it (``.md``).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from vlm_annotation.detectors import DETECTOR_NAMES, ClassMap
from vlm_annotation.engine import fuse_detections
from vlm_annotation.fusion import FUSION_METHODS
from vlm_annotation.label_scoring import (
    PR_IOU,
    SWEEP_METRICS,
    _flags,
    _fmt,
    _or,
    _table,
    check_detector_boxes,
    coco_evaluate,
    comparison_rows,
    load_ground_truth,
    markdown,
    match_images,
)
from vlm_core.io_utils import InputError, write_json_atomic, write_text_atomic
from vlm_core.runtime import report_input_errors, require_output_file, require_path
from vlm_core.schema import load_annotations


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True, help="annotation file to measure (JSON of this toolkit)")
    p.add_argument("--ground_truth", required=True, help="ground truth: COCO json, or an Ultralytics data.yaml")
    p.add_argument("--output_file", required=True, help="metrics JSON to write (a markdown table goes beside it, .md)")
    p.add_argument("--images_dir", default=None,
                   help="with a YOLO --ground_truth: the folder its image names count from (default its path)")
    p.add_argument("--class_map", default=None,
                   help="JSON file mapping ground-truth class names onto the annotations' names, as in "
                        "import_labels.py ({\"wine glass\": \"glass\", \"person\": null})")
    p.add_argument("--conf_threshold", type=float, default=None,
                   help="count only objects scoring above this (default: all objects of the file, which the "
                        "detectors kept above its meta.conf_threshold)")
    p.add_argument("--sweep", action="store_true",
                   help="score a grid of fusion settings from the kept detector boxes and recommend the best")
    p.add_argument("--sweep_fusion", nargs="+", choices=FUSION_METHODS, default=list(FUSION_METHODS),
                   help="fusion methods of the sweep (default wbf nms)")
    p.add_argument("--sweep_weights", nargs="+", default=["1,1", "2,1", "1,2"],
                   help="YOLO,RTDETR weight pairs of the sweep (default 1,1 2,1 1,2)")
    p.add_argument("--sweep_iou", type=float, nargs="+", default=[0.4, 0.55, 0.7],
                   help="IoU thresholds of the sweep (default 0.4 0.55 0.7)")
    p.add_argument("--sweep_conf", type=float, nargs="+", default=None,
                   help="confidence thresholds of the sweep, at least the file's own "
                        "(default: the file's, +0.1, +0.2)")
    p.add_argument("--sweep_metric", choices=SWEEP_METRICS, default="f1",
                   help="what the recommendation maximises: f1 of precision and recall (default; every object "
                        "of a label file is a training label, whatever its score), map or map50")
    args = p.parse_args(argv)
    try:
        args.sweep_weights = [tuple(float(v) for v in w.split(",")) for w in args.sweep_weights]
    except ValueError:
        raise InputError("--sweep_weights: give pairs like 1,1 2,1") from None
    checks = [
        (args.conf_threshold is None or 0 <= args.conf_threshold <= 1, "--conf_threshold must be between 0 and 1"),
        (all(len(w) == 2 and min(w) >= 0 and sum(w) > 0 for w in args.sweep_weights),
         "--sweep_weights: each a pair of non-negative weights, not both zero (1,1)"),
        (all(0 < v <= 1 for v in args.sweep_iou), "--sweep_iou: each in (0, 1]"),
        (args.sweep_conf is None or all(0 <= v < 1 for v in args.sweep_conf), "--sweep_conf: each in [0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    inputs = {"--annotations": require_path(args.annotations, "--annotations", "file"),
              "--ground_truth": require_path(args.ground_truth, "--ground_truth", "file"),
              "--class_map": args.class_map}
    require_output_file(args.output_file, "--output_file", inputs)
    require_output_file(Path(args.output_file).with_suffix(".md"), "--output_file (its .md)", inputs)
    return args


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    source, gt_path = Path(args.annotations), Path(args.ground_truth)
    md_path = Path(args.output_file).with_suffix(".md")
    data = load_annotations(source)
    kept = check_detector_boxes(data, source)
    if args.sweep and not kept:
        raise InputError(f"--sweep: {source} has no detector_boxes in every image record; annotate with "
                         "data_annotation.py --keep_detector_boxes")
    truth = load_ground_truth(gt_path, args.images_dir, ClassMap.from_file(args.class_map))
    meta = data.get("meta", {})
    file_conf = meta.get("conf_threshold")
    conf = args.conf_threshold if args.conf_threshold is not None else file_conf

    records = {r["image"]: r for r in data["images"]}
    matched = match_images(sorted(records), sorted(truth.images))
    size_mismatch = sorted(p for p, t in matched.items() if (records[p]["width"], records[p]["height"])
                           != (truth.images[t]["width"], truth.images[t]["height"]))
    pairs = {p: t for p, t in matched.items() if p not in size_mismatch}
    if not pairs:
        raise InputError(f"--ground_truth: none of the {len(records)} images of {source} is in {gt_path}")
    skipped = {s["image"] for s in data.get("skipped", [])}
    matched_skips = match_images(sorted(skipped), sorted(set(truth.images) - set(matched.values())))
    gt_scored = set(pairs.values())
    images = {
        "evaluated": len(pairs),
        "only_in_annotations": sorted(set(records) - set(matched)),
        "only_in_ground_truth": sorted(set(truth.images) - set(matched.values()) - set(matched_skips.values())),
        "skipped_in_annotations": sorted(matched_skips),
        "size_mismatch": size_mismatch,
    }
    scored_truth = {t: truth.images[t] for t in gt_scored}
    labels = {o["label"] for p in pairs for o in records[p]["objects"]}
    if kept:
        labels |= {d["label"] for p in pairs for dets in records[p]["detector_boxes"].values() for d in dets}
    categories = list(truth.vocabulary) + sorted(labels - set(truth.vocabulary))

    def score(objects_of, threshold: float | None = args.conf_threshold) -> dict:
        preds = {pairs[p]: [o for o in objects_of(records[p]) if threshold is None or o["score"] > threshold]
                 for p in pairs}
        return coco_evaluate(scored_truth, preds, categories)

    result = {"annotations": str(source), "ground_truth": str(gt_path), "fusion": meta.get("fusion"),
              "conf_threshold": conf,
              "precision_recall_iou": PR_IOU, "images": images,
              "labels_not_in_ground_truth": sorted(labels - set(truth.vocabulary)),
              # What reading the ground truth clipped or dropped (as import_labels.py reports it).
              "ground_truth_report": {k: v for k, v in sorted(truth.counts.items()) if v},
              **score(lambda r: r["objects"])}
    if kept:
        weights, iou = meta.get("detector_weights", [1.0, 1.0]), meta.get("iou_threshold", 0.55)
        fusion_conf = meta.get("fusion_conf_threshold")  # the objects' own threshold, when the file has one
        per = {"yolo": lambda r: r["detector_boxes"]["yolo"], "rtdetr": lambda r: r["detector_boxes"]["rtdetr"]}
        for method in FUSION_METHODS:
            per[method] = (lambda m: lambda r: fuse_detections(
                [r["detector_boxes"][n] for n in DETECTOR_NAMES], r["width"], r["height"], m, weights, iou,
                fusion_conf))(method)
        result["detectors"] = {("yolo + rtdetr " + k if k in FUSION_METHODS else k): score(f) for k, f in per.items()}
    if args.sweep:
        base = file_conf or 0.0
        low = [c for c in args.sweep_conf or [] if c < base]
        if low:
            raise InputError(f"--sweep_conf {low[0]:g}: below the conf_threshold {base:g} of {source} "
                             "(its detectors kept no boxes under it)")
        default = [base, round(base + 0.1, 4), round(base + 0.2, 4)]
        if meta.get("fusion_conf_threshold") is not None:  # the objects' own threshold: the file's setting
            default.append(meta["fusion_conf_threshold"])
        confs = sorted(set(args.sweep_conf or default))
        confs = [c for c in confs if c < 1]
        grid = list(itertools.product(args.sweep_fusion, args.sweep_weights, args.sweep_iou, confs))
        own = (meta.get("fusion"), tuple(meta.get("detector_weights", ())), meta.get("iou_threshold"),
               meta.get("fusion_conf_threshold", file_conf))
        grid.sort(key=lambda g: g != own)  # the file's own setting first: it wins ties
        from tqdm import tqdm
        sweep = []
        for method, w, iou, c in tqdm(grid, desc="sweep", unit="setting"):
            m = score(lambda r, method=method, w=w, iou=iou, c=c: fuse_detections(
                [r["detector_boxes"][n] for n in DETECTOR_NAMES], r["width"], r["height"], method, list(w), iou, c),
                None)
            m.pop("per_class")
            sweep.append({"fusion": method, "detector_weights": list(w), "iou_threshold": iou, "conf_threshold": c,
                          "flags": _flags(method, w, iou, c), **m})
        own_iou = meta.get("iou_threshold", 0.55)

        def preference(s: dict) -> tuple:
            # The best metric; among equals the better map, then the setting closest to the file's own.
            return (_or(s[args.sweep_metric]), _or(s["map"]), s["fusion"] == own[0],
                    tuple(s["detector_weights"]) == own[1], -abs(s["iou_threshold"] - own_iou),
                    -abs(s["conf_threshold"] - base))
        best = max(sweep, key=preference)
        result["sweep"] = sweep
        result["recommended"] = {k: best[k] for k in ("fusion", "detector_weights", "iou_threshold",
                                                      "conf_threshold", "flags")}
        result["recommended"].update(metric=args.sweep_metric, value=best[args.sweep_metric])
    text = markdown(result)
    write_json_atomic(args.output_file, result)
    write_text_atomic(md_path, text)
    if "detectors" in result:
        print("\n".join(_table(comparison_rows(result), "boxes")), flush=True)
    if "recommended" in result:
        r = result["recommended"]
        print(f"recommended: {r['flags']} ({r['metric']} {_fmt(r['value'])})", flush=True)
    print(f"evaluated {images['evaluated']} images: map {_fmt(result['map'])}, map50 {_fmt(result['map50'])}, "
          f"precision {_fmt(result['precision'])}, recall {_fmt(result['recall'])}; "
          f"{len(images['only_in_annotations'])} only in the annotations, "
          f"{len(images['only_in_ground_truth'])} only in the ground truth, "
          f"{len(images['skipped_in_annotations'])} skipped by the annotation run -> {args.output_file}, {md_path}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
