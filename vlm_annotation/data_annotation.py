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

For every image (the folder is walked recursively): YOLO and RT-DETR detect, their boxes
are fused (Weighted Boxes Fusion per class, or NMS), BLIP/BLIP-2 captions a context crop
of each object with the class's prompt plus the whole image, each object gets a
description with its position, size and relations, and the image gets Q&A pairs.

With ``--keep_detector_boxes`` each image record also keeps each detector's own boxes
(``detector_boxes``), so ``evaluate_annotations.py`` can score YOLO alone, RT-DETR alone and
both fusions, and sweep the fusion settings, without running the detectors again. Labels you
already have go through the same captioning, description and Q&A code with
``import_labels.py`` (COCO json or a YOLO dataset).

Resumable: progress goes to ``<output_file>.progress.jsonl`` a line per image; run the
same command again after a crash and finished images are not redone. Run a finished command
again and nothing is redone; add images to the folder and only those are annotated. Scales out: under
``torchrun --nproc_per_node N`` (or ``accelerate launch``) each process takes a shard and
rank 0 writes the merged file; across machines use ``--num_shards/--shard_index`` and
``vlm_annotation/merge_annotations.py``. The result equals a single-process run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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
from vlm_annotation.fusion import FUSION_METHODS
from vlm_core.images import list_images
from vlm_core.io_utils import InputError
from vlm_core.runtime import (
    report_input_errors,
    require_model,
    require_path,
    require_yolo_weights,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images_dir", required=True, help="folder of images (walked recursively)")
    p.add_argument("--output_file", required=True, help="annotation file to write (JSON)")
    p.add_argument("--yolo_model", required=True, help="Ultralytics YOLO weights (.pt)")
    p.add_argument("--detr_model", required=True, help="RT-DETR model: local dir or hub id")
    p.add_argument("--detr_processor", default=None,
                   help="RT-DETR image processor dir or hub id (default: the --detr_model dir)")
    p.add_argument("--conf_threshold", type=float, default=0.3,
                   help="keep detections scoring above this, per detector (default 0.3)")
    p.add_argument("--fusion_conf_threshold", type=float, default=None,
                   help="fuse into the objects only boxes scoring above this (default: --conf_threshold). Set "
                        "higher than --conf_threshold with --keep_detector_boxes: the objects come from the surer "
                        "boxes, and each detector's boxes down to --conf_threshold are kept for scoring "
                        "(evaluate_annotations.py --sweep tries the thresholds in between)")
    p.add_argument("--fusion", choices=FUSION_METHODS, default="wbf",
                   help="how to combine the two detectors: weighted boxes fusion or NMS (default wbf)")
    p.add_argument("--iou_threshold", type=float, default=0.55,
                   help="boxes of one class overlapping more than this are fused/suppressed (default 0.55)")
    p.add_argument("--detector_weights", type=float, nargs=2, default=[1.0, 1.0], metavar=("YOLO", "RTDETR"),
                   help="weights of YOLO and RT-DETR in the fusion (default 1 1)")
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
    checks = [
        (0.0 <= args.conf_threshold <= 1.0, "--conf_threshold must be between 0 and 1"),
        (args.fusion_conf_threshold is None or args.conf_threshold <= args.fusion_conf_threshold <= 1.0,
         "--fusion_conf_threshold must be between --conf_threshold and 1"),
        (0.0 < args.iou_threshold <= 1.0, "--iou_threshold must be in (0, 1]"),
        (all(w >= 0 for w in args.detector_weights) and sum(args.detector_weights) > 0,
         "--detector_weights must be non-negative, not both zero"),
        (args.max_det >= 1, "--max_det must be at least 1"),
        (args.imgsz >= 32, "--imgsz must be at least 32"),
        *describe_checks(args),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    require_path(args.images_dir, "--images_dir", "dir")
    check_describe_paths(args, {
        "--yolo_model": args.yolo_model, "--detr_model": args.detr_model, "--detr_processor": args.detr_processor})
    args.yolo_model = require_yolo_weights(args.yolo_model, "--yolo_model")
    args.detr_model = require_model(args.detr_model, "--detr_model")
    if args.detr_processor:
        args.detr_processor = require_model(args.detr_processor, "--detr_processor")
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
    meta = {"tool": "vlm_annotation/data_annotation.py", "version": TOOL_VERSION, "images_dir": str(args.images_dir)}
    return run_annotation(args, images_dir, names, lambda device: Annotator(args, device, class_map, prompt_book),
                          run_settings(args, class_map, prompt_book), meta, start)


if __name__ == "__main__":
    sys.exit(main())
