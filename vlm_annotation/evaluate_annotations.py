"""Measure an annotation file against ground truth: COCO mAP, precision and recall, per class.

    python vlm_annotation/evaluate_annotations.py --annotation_file annotations.json \\
        --ground_truth ground_truth.json --output_file label_metrics.json

    # ensemble versus each detector, and the best fusion settings for this data
    python vlm_annotation/data_annotation.py ... --keep_detector_boxes --output_file annotations.json
    python vlm_annotation/evaluate_annotations.py --annotation_file annotations.json \\
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

The generated Q&A is scored against the truth too (:mod:`vlm_annotation.qa_truth`): per type, the
share of answers true of the scene (count, count_class, exists, location cell and surface, surface,
relation, region_label, grounding), and how many true objects were labelled twice (matched at IoU 0.5
by objects of two classes). The sweep scores the Q&A each setting would generate (every type that needs
no caption) and, by default, recommends the setting whose answers are most often true
(``--sweep_metric qa_true``): the Q&A is what the VLM is taught, so its truth is what the VLM will
learn; mAP rewards keeping one object twice under two labels, which teaches wrong counts.

Fusion settings include the agreement rule of :func:`vlm_annotation.fusion.select_boxes` (a box that two
detectors found is fused from a lower score, ``meta.agreement_conf_threshold``); ``--sweep_agree_conf`` adds
it as a dimension of the sweep. mAP counts each object's ``label_candidates`` (the runner-up labels of a
cross-class merge) as further detections of its box at their own scores, as COCO scores a detector that
gives a box several labels; precision, recall and F1 count the objects only (see
:func:`vlm_annotation.label_scoring.coco_evaluate`).

Pictures of the file's own objects, beside the metrics (or in ``--plots_dir``), named after ``--output_file``:
``label_metrics.pr_curves.png`` (each class's precision-recall curve at IoU 0.5, from pycocotools' own
precision array, the one its AP50 averages) and ``label_metrics.confusion_matrix.png`` with its counts in
``label_metrics.confusion_matrix.json`` (rows the true class, columns the predicted one: each object matched to
the true object it overlaps most at IoU >= 0.5, its own class first; ``background`` counts the false positives
in its row and the misses in its column). The metrics JSON names them (``plots``).

Writes ``--output_file`` (JSON) and a markdown table beside it (``.md``), as a set: the report first, then the
JSON, each atomically, the JSON naming the report's SHA-256 (``report.sha256``). A run killed between the two
leaves a new report beside the JSON of an earlier run, whose hash then does not match it: a reader can tell
(:func:`report_is_current`), and the same command again writes both.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from vlm_annotation.detectors import ClassMap
from vlm_annotation.engine import fuse_detections
from vlm_annotation.fusion import DEFAULT_AGNOSTIC_IOU, FUSION_METHODS, select_boxes
from vlm_annotation.label_plots import plot_paths, write_label_plots
from vlm_annotation.label_scoring import (
    PR_IOU,
    SWEEP_METRICS,
    _flags,
    _fmt,
    _or,
    _table,
    check_detector_boxes,
    check_label_candidates,
    coco_evaluate,
    comparison_rows,
    confusion_matrix,
    load_ground_truth,
    markdown,
    match_images,
)
from vlm_annotation.qa import generate_qa, image_rng
from vlm_annotation.qa_truth import read_surfaces, score_qa
from vlm_core.flags import ANNOTATION_FILE, flag_names
from vlm_core.io_utils import (  # noqa: F401 (re-exported)
    InputError,
    read_json,
    report_is_current,
    write_json_atomic,
    write_results_with_report,
    write_text_atomic,
)
from vlm_core.runtime import (
    plural,
    progress_bar,
    report_input_errors,
    require_output_dir,
    require_output_file,
    require_path,
)
from vlm_core.schema import load_annotations


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(*flag_names("--annotation_file", ANNOTATION_FILE), required=True,
                   help="annotation file to measure (JSON of this toolkit)")
    p.add_argument("--ground_truth", required=True, help="ground truth: COCO json, or an Ultralytics data.yaml")
    p.add_argument("--output_file", required=True, help="metrics JSON to write (a markdown table goes beside it, .md)")
    p.add_argument("--plots_dir", default=None,
                   help="folder for the precision-recall curves and the confusion matrix (<stem>.pr_curves.png, "
                        "<stem>.confusion_matrix.png / .json, <stem> the --output_file's name); default: beside "
                        "--output_file")
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
    p.add_argument("--sweep_weights", nargs="+", default=None,
                   help="weights of the sweep, one per detector of the file in its order, comma-separated "
                        "(default: all 1, and each detector doubled in turn: 1,1 2,1 1,2 for two)")
    p.add_argument("--sweep_iou", type=float, nargs="+", default=[0.4, 0.55, 0.7],
                   help="IoU thresholds of the sweep (default 0.4 0.55 0.7)")
    p.add_argument("--sweep_conf", type=float, nargs="+", default=None,
                   help="confidence thresholds of the sweep, at least the file's own "
                        "(default: the file's, +0.1, +0.2)")
    p.add_argument("--sweep_agnostic_iou", type=float, nargs="+", default=[0.0, DEFAULT_AGNOSTIC_IOU, 0.6],
                   help="--agnostic_iou values of the sweep, 0 for no cross-class merging "
                        f"(default 0 {DEFAULT_AGNOSTIC_IOU:g} 0.6)")
    p.add_argument("--sweep_agree_conf", type=float, nargs="+", default=[0.0, 0.25],
                   help="agreement thresholds of the sweep (data_annotation.py's --agreement_conf_threshold: a box "
                        "that another detector's box overlaps is fused from this score up), 0 for none; values "
                        "not between the file's conf_threshold and a swept --conf_threshold are skipped "
                        "(default 0 0.25)")
    p.add_argument("--sweep_metric", choices=SWEEP_METRICS, default="qa_true",
                   help="what the recommendation maximises: qa_true, the share of generated answers true of the "
                        "scene (default: the Q&A is what the VLM learns), count_true, the share of 'how many "
                        "objects?' answers that are right (the hardest type: one missed or extra object makes it "
                        "wrong), f1 of precision and recall (every "
                        "object of a label file is a training label, whatever its score), map or map50")
    args = p.parse_args(argv)
    try:
        if args.sweep_weights is not None:
            args.sweep_weights = [tuple(float(v) for v in w.split(",")) for w in args.sweep_weights]
    except ValueError:
        raise InputError("--sweep_weights: give comma-separated weights like 1,1 2,1") from None
    checks = [
        (args.conf_threshold is None or 0 <= args.conf_threshold <= 1, "--conf_threshold must be between 0 and 1"),
        (args.sweep_weights is None or all(min(w) >= 0 and sum(w) > 0 for w in args.sweep_weights),
         "--sweep_weights: non-negative weights, not all zero (1,1)"),
        (all(0 < v <= 1 for v in args.sweep_iou), "--sweep_iou: each in (0, 1]"),
        (all(0 <= v <= 1 for v in args.sweep_agnostic_iou), "--sweep_agnostic_iou: each in [0, 1] (0: off)"),
        (args.sweep_conf is None or all(0 <= v < 1 for v in args.sweep_conf), "--sweep_conf: each in [0, 1)"),
        (all(0 <= v < 1 for v in args.sweep_agree_conf), "--sweep_agree_conf: each in [0, 1) (0: none)"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    inputs = {"--annotation_file": require_path(args.annotation_file, "--annotation_file", "file"),
              "--ground_truth": require_path(args.ground_truth, "--ground_truth", "file"),
              "--class_map": args.class_map}
    require_output_file(args.output_file, "--output_file", inputs)
    require_output_file(Path(args.output_file).with_suffix(".md"), "--output_file (its .md)", inputs)
    if args.plots_dir is None:
        args.plots_dir = str(Path(args.output_file).parent)
    require_output_dir(args.plots_dir, "--plots_dir")
    for key, path in plot_paths(args.plots_dir, Path(args.output_file).stem).items():
        require_output_file(path, f"--plots_dir (its {path.name})", inputs)
    return args


def fused_objects(record: dict, kept: list[str], method: str, weights, iou: float, conf: float | None,
                  agnostic: float | None, agree: float | None = None) -> list[dict]:
    """The objects data_annotation.py would store for ``record`` from its kept detector boxes: the boxes
    :func:`select_boxes` passes (above ``conf``, or above ``agree`` where another detector agrees, at the
    IoU the merge uses), fused by engine.fuse_detections."""
    per = select_boxes([record["detector_boxes"][n] for n in kept], conf, agree, agnostic or DEFAULT_AGNOSTIC_IOU)
    return fuse_detections(per, kept, record["width"], record["height"], method, weights, iou, None, agnostic)


def write_results(output_file: str | Path, result: dict) -> Path:
    """The report, then the JSON naming its hash, each atomically (see the module docstring)."""
    md_path = Path(output_file).with_suffix(".md")
    write_results_with_report(output_file, result, md_path, markdown(result, md_path.parent))
    return md_path


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    return evaluate(args)


def evaluate(args) -> int:
    source, gt_path = Path(args.annotation_file), Path(args.ground_truth)
    data = load_annotations(source)
    kept = check_detector_boxes(data, source)  # the detectors' names, [] when the boxes were not kept
    check_label_candidates(data, source)
    if args.sweep and args.sweep_weights and any(len(w) != len(kept) for w in args.sweep_weights):
        raise InputError(f"--sweep_weights: give {plural(len(kept), 'weight')} each, one per detector of {source} "
                         f"({', '.join(kept)})")
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
        if len(records) == 1:
            raise InputError(f"--ground_truth: the one image of {source} is not in {gt_path}")
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
    labels |= {c["label"] for p in pairs for o in records[p]["objects"] for c in o.get("label_candidates", ())}
    if kept:
        labels |= {d["label"] for p in pairs for dets in records[p]["detector_boxes"].values() for d in dets}
    categories = list(truth.vocabulary) + sorted(labels - set(truth.vocabulary))

    surfaces = read_surfaces(gt_path)
    qa_seed, max_region_qa = meta.get("seed", 42), meta.get("max_region_qa", 10)

    def predictions_of(objects_of, threshold: float | None = args.conf_threshold) -> dict:
        return {pairs[p]: [o for o in objects_of(records[p]) if threshold is None or o["score"] > threshold]
                for p in pairs}

    def score(objects_of, threshold: float | None = args.conf_threshold) -> dict:
        return coco_evaluate(scored_truth, predictions_of(objects_of, threshold), categories)

    # The file's own objects, scored once: their figures, and the curves and matrix of the pictures.
    curves: dict = {}
    own_predictions = predictions_of(lambda r: r["objects"])
    own = coco_evaluate(scored_truth, own_predictions, categories, curves)
    confusion = confusion_matrix(scored_truth, own_predictions, categories)

    def score_generated_qa(objects_of) -> dict:
        """The Q&A a setting's objects would get, scored against the truth (no captions: no surface answers)."""
        recs = {}
        for p in pairs:
            rec = records[p]
            objs = [{**o, "id": k, "description": ""} for k, o in enumerate(objects_of(rec))]
            qa = generate_qa(objs, rec["width"], rec["height"], categories, image_rng(qa_seed, p), {}, max_region_qa)
            recs[pairs[p]] = {**rec, "objects": objs, "qa": qa}
        q = score_qa(recs, scored_truth, surfaces, categories)
        count = q["per_type"].get("count", {})
        return {"qa_true": q["share"], "count_true": count.get("share"), "labelled_twice": q["labelled_twice"]}

    result = {"annotations": str(source), "ground_truth": str(gt_path), "fusion": meta.get("fusion"),
              "conf_threshold": conf,
              "precision_recall_iou": PR_IOU, "images": images,
              "labels_not_in_ground_truth": sorted(labels - set(truth.vocabulary)),
              # What reading the ground truth clipped or dropped (as import_labels.py reports it).
              "ground_truth_report": {k: v for k, v in sorted(truth.counts.items()) if v},
              **own,
              # The Q&A of the file as written (with its captions' surfaces), judged against the truth.
              "qa_truth": score_qa({pairs[p]: records[p] for p in pairs}, scored_truth, surfaces, categories)}
    if kept:
        weights = meta.get("detector_weights") or [1.0] * len(kept)
        iou = meta.get("iou_threshold", 0.55)
        agnostic = meta.get("agnostic_iou")  # None (files from before it, or 0 = off): no merging
        agnostic = agnostic or None
        fusion_conf = meta.get("fusion_conf_threshold")  # the objects' own threshold, when the file has one
        agree = meta.get("agreement_conf_threshold")  # likewise the agreement rule's
        per = {n: (lambda n: lambda r: r["detector_boxes"][n])(n) for n in kept}
        for method in FUSION_METHODS:
            per[method] = (lambda m: lambda r: fused_objects(r, kept, m, weights, iou, fusion_conf, agnostic,
                                                             agree))(method)
        joined = " + ".join(kept)
        result["detectors"] = {(f"{joined} {k}" if k in FUSION_METHODS else k): {**score(f), **score_generated_qa(f)}
                               for k, f in per.items()}
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
        sweep_weights = args.sweep_weights or [tuple(1.0 + (k == d) for k in range(len(kept)))
                                               for d in range(-1, len(kept))]
        agnostics = sorted({v or None for v in args.sweep_agnostic_iou}, key=lambda v: -1 if v is None else v)
        agrees = sorted({v or None for v in args.sweep_agree_conf} | {meta.get("agreement_conf_threshold")},
                        key=lambda v: -1 if v is None else v)
        # An agreement threshold does something only between the boxes the detectors kept and the setting's
        # conf_threshold; elsewhere it is the setting without one.
        grid = [g for g in itertools.product(args.sweep_fusion, sweep_weights, args.sweep_iou, confs, agnostics,
                                             agrees) if g[5] is None or base < g[5] < g[3]]
        own = (meta.get("fusion"), tuple(meta.get("detector_weights", ())), meta.get("iou_threshold"),
               meta.get("fusion_conf_threshold", file_conf), meta.get("agnostic_iou") or None,
               meta.get("agreement_conf_threshold"))
        grid.sort(key=lambda g: g != own)  # the file's own setting first: it wins ties
        sweep = []
        for method, w, iou, c, ag, agree in progress_bar(grid, desc="sweep", unit="setting"):
            def objects_of(r, method=method, w=w, iou=iou, c=c, ag=ag, agree=agree):
                return fused_objects(r, kept, method, list(w), iou, c, ag, agree)
            m = score(objects_of, None)
            m.pop("per_class")
            sweep.append({"fusion": method, "detector_weights": list(w), "iou_threshold": iou, "conf_threshold": c,
                          "agnostic_iou": ag or 0.0, "agreement_conf_threshold": agree,
                          "flags": _flags(method, w, iou, c, ag or 0.0, agree), **m,
                          **score_generated_qa(objects_of)})
        own_iou = meta.get("iou_threshold", 0.55)

        def preference(s: dict) -> tuple:
            # The best metric; among equals the better map, then the setting closest to the file's own.
            return (_or(s[args.sweep_metric]), _or(s["map"]), s["fusion"] == own[0],
                    tuple(s["detector_weights"]) == own[1], -abs(s["iou_threshold"] - own_iou),
                    -abs(s["conf_threshold"] - base), (s["agnostic_iou"] or None) == own[4],
                    s["agreement_conf_threshold"] == own[5])
        best = max(sweep, key=preference)
        result["sweep"] = sweep
        result["recommended"] = {k: best[k] for k in ("fusion", "detector_weights", "iou_threshold",
                                                      "conf_threshold", "agnostic_iou", "agreement_conf_threshold",
                                                      "flags")}
        result["recommended"].update(metric=args.sweep_metric, value=best[args.sweep_metric])
    # The pictures before the metrics that name them: a run killed in between leaves the old metrics.
    result["plots"] = write_label_plots(curves, confusion, args.plots_dir, Path(args.output_file).stem,
                                        f"{source.name} vs {gt_path.name}")
    md_path = write_results(args.output_file, result)
    if "detectors" in result:
        print("\n".join(_table(comparison_rows(result), "boxes")), flush=True)
    if "recommended" in result:
        r = result["recommended"]
        print(f"recommended: {r['flags']} ({r['metric']} {_fmt(r['value'])})", flush=True)
    q = result["qa_truth"]
    print(f"evaluated {plural(images['evaluated'], 'image')}: map {_fmt(result['map'])}, map50 {_fmt(result['map50'])}, "
          f"precision {_fmt(result['precision'])}, recall {_fmt(result['recall'])}; Q&A true of the scene "
          f"{_fmt(q['share'])} (count {_fmt(q['per_type'].get('count', {}).get('share'))}), "
          f"{q['labelled_twice']} of {plural(q['true_objects'], 'true object')} labelled twice; "
          f"{len(images['only_in_annotations'])} only in the annotations, "
          f"{len(images['only_in_ground_truth'])} only in the ground truth, "
          f"{len(images['skipped_in_annotations'])} skipped by the annotation run -> {args.output_file}, {md_path}; "
          f"plots: {result['plots']['pr_curves']}, {result['plots']['confusion_matrix']}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
