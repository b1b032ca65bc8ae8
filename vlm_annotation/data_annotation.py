"""Stage 1: annotate a folder of images -> annotations.json.

    python vlm_annotation/data_annotation.py \\
        --images_dir data/images --output_file annotations.json \\
        --yolo_model models/yolo/yolov8x/best.pt \\
        --detr_model models/rt-detr/rt-detr-101/m --detr_processor models/rt-detr/rt-detr-101/p \\
        --conf_threshold 0.3

Offline on the tiny models (``python fixtures/make_tiny_models.py --out models/tiny`` and
``python fixtures/sample_images.py --out data/images`` first)::

    python vlm_annotation/data_annotation.py --images_dir data/images --output_file annotations.json \\
        --yolo_model models/tiny/yolo.pt --detr_model models/tiny/rtdetr/m \\
        --detr_processor models/tiny/rtdetr/p --captioner_model models/tiny/blip \\
        --max_det 10 --imgsz 320

Any detector, any number: ``--detector [NAME=]MODEL[,PROCESSOR]`` (repeatable) adds an Ultralytics
model (YOLO of any version, RT-DETR, YOLO-World), a transformers object detector (DETR, RT-DETR v1/v2,
D-FINE, ...) or a zero-shot one (OWLv2, Grounding DINO) prompted with ``--classes`` (or the class map's
names); ``--yolo_model`` and ``--detr_model`` are then optional. An open-vocabulary ensemble::

    python vlm_annotation/data_annotation.py --images_dir data/images --output_file annotations.json \\
        --detector owlv2=google/owlv2-base-patch16-ensemble --detector yolo=yolov8x.pt \\
        --classes glass bottle can --detector_weights 1 2

For every image (the folder is walked recursively): the detectors detect, their boxes
are fused (Weighted Boxes Fusion per class, or NMS), objects of different classes that overlap above
``--agnostic_iou`` are merged into one (the detectors' vote picks the label, the others are kept as
``label_candidates``), BLIP/BLIP-2 captions a context crop
of each object with the class's prompt plus the whole image, each object gets a
description with its position, size and relations, and the image gets Q&A pairs.

With ``--keep_detector_boxes`` each image record also keeps each detector's own boxes
(``detector_boxes``), so ``evaluate_annotations.py`` can score YOLO alone, RT-DETR alone and
both fusions, and sweep the fusion settings, without running the detectors again. Labels you
already have go through the same captioning, description and Q&A code with
``import_labels.py`` (COCO json or a YOLO dataset).

Resumable: progress goes to ``<output_file>.progress.jsonl`` a line per image; run the
same command again after a crash and finished images are not redone. Run a finished command
again and nothing is redone; add images to the folder and only those are annotated. "The same command"
means the same flags, the same images folder and the same model files (path, size, mtime): another folder
with files of the same names, or a model replaced in place, is annotated again. An output corrected by hand
is never overwritten: the run refuses it in one line (move it away, or pass ``--restart`` to redo it). Shards
never share an output: each ``--shard_index`` needs its own ``--output_file``. Scales out: under
``torchrun --nproc_per_node N`` (or ``accelerate launch``) each process takes a shard and
rank 0 writes the merged file; across machines use ``--num_shards/--shard_index`` and
``vlm_annotation/merge_annotations.py``. The result equals a single-process run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vlm_annotation.detectors import (
    ULTRALYTICS_SUFFIXES,
    default_detector_name,
    detector_kind,
    parse_detector_spec,
)
from vlm_annotation.engine import (
    TOOL_VERSION,
    Annotator,
    add_describe_args,
    check_describe_paths,
    describe_checks,
    load_describe_files,
    run_annotation,
    run_settings,
)
from vlm_annotation.fusion import DEFAULT_AGNOSTIC_IOU, FUSION_METHODS
from vlm_core.flags import IMAGES_DIR, flag_names
from vlm_core.images import list_images
from vlm_core.io_utils import InputError
from vlm_core.runtime import (
    report_input_errors,
    require_model,
    require_output_file,
    require_path,
    require_yolo_weights,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(*flag_names("--images_dir", IMAGES_DIR), required=True,
                   help="folder of images (walked recursively)")
    p.add_argument("--output_file", required=True, help="annotation file to write (JSON)")
    p.add_argument("--yolo_model", default=None,
                   help="Ultralytics YOLO weights (.pt); its objects' source is 'yolo' (required without --detector)")
    p.add_argument("--detr_model", default=None,
                   help="RT-DETR model: local dir or hub id; its objects' source is 'rtdetr' (required without "
                        "--detector)")
    p.add_argument("--detr_processor", default=None,
                   help="RT-DETR image processor dir or hub id (default: the --detr_model dir)")
    p.add_argument("--detector", dest="detectors", action="append", default=[], metavar="[NAME=]MODEL[,PROCESSOR]",
                   help="one more detector of the ensemble (repeatable): an Ultralytics file (YOLO of any version, "
                        "RT-DETR, YOLO-World), a transformers object detector, or a zero-shot one (OWLv2, Grounding "
                        "DINO; prompted with --classes or the class map's names); NAME is its source name in the "
                        "objects (default: the file or folder name), PROCESSOR its image processor when not beside it")
    p.add_argument("--classes", nargs="+", default=[],
                   help="the class vocabulary zero-shot detectors are prompted with and YOLO-World is set to "
                        "(glass bottle can ...; default for zero-shot detectors: the names of --class_map)")
    p.add_argument("--conf_threshold", type=float, default=0.3,
                   help="keep detections scoring above this, per detector (default 0.3)")
    p.add_argument("--fusion_conf_threshold", type=float, default=None,
                   help="fuse into the objects only boxes scoring above this (default: --conf_threshold). Set "
                        "higher than --conf_threshold with --keep_detector_boxes: the objects come from the surer "
                        "boxes, and each detector's boxes down to --conf_threshold are kept for scoring "
                        "(evaluate_annotations.py --sweep tries the thresholds in between)")
    p.add_argument("--agreement_conf_threshold", type=float, default=None,
                   help="a box scoring above this but not above --fusion_conf_threshold is fused too when a box of "
                        "another detector (above it as well, any class) overlaps it with IoU > --agnostic_iou: two "
                        "detectors that agree pass a lower bar than one alone (default: off)")
    p.add_argument("--trust_detector_files", action="store_true",
                   help="load Ultralytics .pt detectors without the safe-loading allow-list (unpickling runs any "
                        "code the file holds: only for files you trust)")
    p.add_argument("--fusion", choices=FUSION_METHODS, default="wbf",
                   help="how to combine the two detectors: weighted boxes fusion or NMS (default wbf)")
    p.add_argument("--iou_threshold", type=float, default=0.55,
                   help="boxes of one class overlapping more than this are fused/suppressed (default 0.55)")
    p.add_argument("--agnostic_iou", type=float, default=DEFAULT_AGNOSTIC_IOU,
                   help="after fusion, objects of different classes overlapping more than this are one object: the "
                        "label with the highest fused score wins, the others are kept as label_candidates; 0 turns "
                        f"it off (default {DEFAULT_AGNOSTIC_IOU:g}, measured on the synthetic world)")
    p.add_argument("--detector_weights", type=float, nargs="+", default=None, metavar="W",
                   help="weight of each detector in the fusion, one per detector in the order yolo, rtdetr, then "
                        "each --detector (default 1 each)")
    p.add_argument("--keep_detector_boxes", action="store_true",
                   help="also keep each detector's own boxes (after the class map, before fusion) in each image "
                        "record's detector_boxes, so evaluate_annotations.py can score each detector and other "
                        "fusion settings (--sweep) without running the detectors again")
    p.add_argument("--max_det", type=int, default=50,
                   help="at most this many boxes per detector per image (default 50)")
    p.add_argument("--imgsz", type=int, default=640, help="YOLO input size, a fixed square (default 640)")
    add_describe_args(p, "JSON file mapping detector class names to one vocabulary "
                         "({\"wine glass\": \"glass\", \"person\": null} or per detector {\"yolo\": {...}})")
    args = p.parse_args(argv)
    if not (args.yolo_model or args.detr_model or args.detectors):
        raise InputError("give the detectors: --yolo_model and --detr_model, or --detector (repeatable)")
    specs = [parse_detector_spec(s) for s in args.detectors]
    n_detectors = bool(args.yolo_model) + bool(args.detr_model) + len(specs)
    if args.detector_weights is None:
        args.detector_weights = [1.0] * n_detectors
    checks = [
        (0.0 <= args.conf_threshold <= 1.0, "--conf_threshold must be between 0 and 1"),
        (args.fusion_conf_threshold is None or args.conf_threshold <= args.fusion_conf_threshold <= 1.0,
         "--fusion_conf_threshold must be between --conf_threshold and 1"),
        (args.agreement_conf_threshold is None
         or args.conf_threshold <= args.agreement_conf_threshold < (args.fusion_conf_threshold or args.conf_threshold),
         "--agreement_conf_threshold must be at least --conf_threshold and below --fusion_conf_threshold"),
        (0.0 < args.iou_threshold <= 1.0, "--iou_threshold must be in (0, 1]"),
        (len(args.detector_weights) == n_detectors,
         f"--detector_weights: give {n_detectors} weights, one per detector (yolo, rtdetr, then each --detector)"),
        (all(w >= 0 for w in args.detector_weights) and sum(args.detector_weights) > 0,
         "--detector_weights must be non-negative, not all zero"),
        (0.0 <= args.agnostic_iou <= 1.0, "--agnostic_iou must be between 0 (off) and 1"),
        (args.max_det >= 1, "--max_det must be at least 1"),
        (args.imgsz >= 32, "--imgsz must be at least 32"),
        *describe_checks(args),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    require_path(args.images_dir, "--images_dir", "dir")
    check_describe_paths(args, {
        "--yolo_model": args.yolo_model, "--detr_model": args.detr_model, "--detr_processor": args.detr_processor,
        **{f"--detector {model}": model for _, model, _ in specs}})
    if args.yolo_model:
        args.yolo_model = require_yolo_weights(args.yolo_model, "--yolo_model")
    if args.detr_model:
        args.detr_model = require_model(args.detr_model, "--detr_model")
    if args.detr_processor:
        args.detr_processor = require_model(args.detr_processor, "--detr_processor")
    # Each --detector resolved and named; names are the objects' sources, so they must differ.
    taken = ["yolo"] * bool(args.yolo_model) + ["rtdetr"] * bool(args.detr_model)
    args.detectors = []
    for name, model, processor in specs:
        if Path(model).suffix.lower() in ULTRALYTICS_SUFFIXES:
            model = require_yolo_weights(model, "--detector")
        else:
            model = require_model(model, "--detector")
        processor = require_model(processor, "--detector") if processor else None
        name = name or default_detector_name(model, detector_kind(model))
        if name in taken:
            raise InputError(f"--detector: two detectors are named {name!r}; name them: --detector NAME=MODEL")
        taken.append(name)
        args.detectors.append((name, model, processor))
    return args


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    images_dir = Path(args.images_dir)
    class_map, prompt_book = load_describe_files(args)
    names = list_images(images_dir)
    if not names:
        raise InputError(f"--images_dir: no images found in {images_dir}")
    # Outputs never land among the images (the README's rule), checked once there is something to annotate.
    require_output_file(args.output_file, "--output_file", {"--images_dir": images_dir})
    meta = {"tool": "vlm_annotation/data_annotation.py", "version": TOOL_VERSION, "images_dir": str(args.images_dir)}
    return run_annotation(args, images_dir, names, lambda device: Annotator(args, device, class_map, prompt_book),
                          run_settings(args, class_map, prompt_book), meta, start)


if __name__ == "__main__":
    sys.exit(main())
