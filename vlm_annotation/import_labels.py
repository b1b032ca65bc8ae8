"""Stage 1 from labels you already have: a COCO json or an Ultralytics YOLO dataset -> annotations.json.

    python vlm_annotation/import_labels.py --coco labels.json --images_dir data/images \\
        --output_file annotations.json

    python vlm_annotation/import_labels.py --yolo_data dataset/data.yaml --output_file annotations.json

Offline on the tiny models (see data_annotation.py), add ``--captioner_model models/tiny/blip``.

The boxes come from the labels (``sources: ["labels"]``, score 1.0); the captions, object
descriptions and Q&A pairs come from exactly the code of ``data_annotation.py``, with the
same flags (captioner, prompts, class map, seed), the same resume (run the same command
again), sharding (``--num_shards/--shard_index`` + ``merge_annotations.py``), progress bar
and summary line. A ``--class_map`` applies to the label names (a ``"labels"`` section or
one mapping for all).

Real label files are messy, and nothing is dropped silently: ``iscrowd`` regions are
dropped (they are not single objects), boxes leaving the image are clipped, zero-area
boxes and boxes entirely outside the image are dropped, images listed but missing on disk
are skipped with their reason, images without boxes are kept (negatives teach "there is
no bottle"); the summary line and ``meta.labels`` say how many of each. COCO category ids
may be anything; file names may hold folders (relative to ``--images_dir``). A file that
is not COCO (or a YOLO label line that is not one) stops with one line naming the file and
the field (``annotations[3].bbox``) or line, exit code 2, nothing written.

With ``--yolo_data``, image names are relative to ``--images_dir`` (default: the dataset's
``path``); its ``train``/``val``/``test`` folders or list files are read, labels are found
the Ultralytics way (``.../images/...`` -> ``.../labels/....txt``; no label file = no boxes),
and polygon (segment) lines count as their bounding box, as Ultralytics trains on them.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from vlm_annotation.detectors import LABELS_SOURCE
from vlm_annotation.engine import (
    TOOL_VERSION,
    Describer,
    Skip,
    add_describe_args,
    check_describe_paths,
    describe_checks,
    describe_settings,
    load_describe_files,
    model_identity,
    round_objects,
    run_annotation,
)
from vlm_annotation.label_readers import DROP_REASONS, LabelSet, displayed_size, read_coco, read_yolo
from vlm_core.flags import IMAGES_DIR, flag_names
from vlm_core.images import list_images
from vlm_core.io_utils import InputError
from vlm_core.runtime import report_input_errors, require_path


def summary_text(counts: Counter) -> str:
    """``labels: 12 boxes, 2 clipped to the image; dropped 1 iscrowd region, ...`` for the summary line."""
    parts = [f"labels: {counts['boxes']} boxes, {counts['clipped']} clipped to the image"]
    dropped = [f"{counts[k]} {one if counts[k] == 1 else many}" for k, (one, many) in DROP_REASONS.items() if counts[k]]
    parts.append("dropped " + (", ".join(dropped) if dropped else "nothing"))
    parts.append(f"kept {counts['negative_images']} images without boxes (negatives)")
    if counts["images_missing"]:
        parts.append(f"{counts['images_missing']} images missing on disk (skipped)")
    if counts["images_size_mismatch"]:
        parts.append(f"{counts['images_size_mismatch']} images whose size differs from the labels' (skipped)")
    if counts["images_not_in_labels"]:
        parts.append(f"{counts['images_not_in_labels']} images of --images_dir not in the labels (left out)")
    return "; ".join(parts)


class LabelAnnotator:
    """Objects from the labels (score 1.0, sources ["labels"]), then described like detections."""

    def __init__(self, labels: LabelSet, describer: Describer):
        self.labels, self.describer = labels, describer

    def annotate(self, names: list[str], images: list) -> list:
        out: list = [None] * len(names)
        keep = []
        for i, (name, image) in enumerate(zip(names, images)):
            entry = self.labels.images[name]
            if image.size != (entry["width"], entry["height"]):
                out[i] = Skip(f"the image is {image.width}x{image.height} (as displayed) but the labels say "
                              f"{entry['width']}x{entry['height']}")
                continue
            objects = [{"label": o["label"], "bbox": list(o["bbox"]), "score": 1.0, "sources": [LABELS_SOURCE]}
                       for o in entry["objects"]]
            keep.append((i, name, image, round_objects(objects)))
        if keep:
            records = self.describer.describe([k[1] for k in keep], [k[2] for k in keep], [k[3] for k in keep])
            for (i, *_), record in zip(keep, records):
                out[i] = record
        return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--coco", default=None, help="COCO detection json (images, annotations, categories)")
    source.add_argument("--yolo_data", default=None,
                        help="Ultralytics dataset yaml (path, train, val, names); labels beside the images")
    p.add_argument(*flag_names("--images_dir", IMAGES_DIR), default=None,
                   help="folder the image file names are relative to (required with --coco; with --yolo_data "
                        "the default is the dataset's path)")
    p.add_argument("--output_file", required=True, help="annotation file to write (JSON)")
    add_describe_args(p, "JSON file mapping label names to one vocabulary ({\"wine glass\": \"glass\", "
                         "\"person\": null}, or a \"labels\" section of a per-detector map)")
    args = p.parse_args(argv)
    checks = [(args.images_dir is not None or args.coco is None, "--images_dir is required with --coco"),
              *describe_checks(args)]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    flag, labels_file = ("--coco", args.coco) if args.coco else ("--yolo_data", args.yolo_data)
    require_path(labels_file, flag, "file")
    if args.images_dir:
        require_path(args.images_dir, "--images_dir", "dir")
    check_describe_paths(args, {flag: labels_file, "--images_dir": args.images_dir})
    return args


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    flag, labels_file = ("--coco", args.coco) if args.coco else ("--yolo_data", args.yolo_data)
    images_dir = Path(args.images_dir) if args.images_dir else None
    class_map, prompt_book = load_describe_files(args)
    if args.coco:
        labels = read_coco(args.coco, class_map)
    else:
        labels = read_yolo(args.yolo_data, images_dir, class_map)
        images_dir = images_dir or labels.root
    names = sorted(labels.images)
    if not names:
        raise InputError(f"{flag}: {labels_file} lists no images")
    skip = dict(labels.unreadable)
    for name in names:
        entry = labels.images[name]
        if name in skip:
            continue
        if not (images_dir / name).is_file():
            skip[name], why = f"listed in {Path(labels_file).name} but not found in --images_dir", "missing"
        else:
            try:
                width, height = displayed_size(images_dir / name)
            except Exception:  # an unreadable image: loading it reports why, and it is skipped then
                continue
            if (width, height) == (entry["width"], entry["height"]):
                continue
            skip[name] = (f"the image is {width}x{height} (as displayed) but the labels say "
                          f"{entry['width']}x{entry['height']}")
            why = "size_mismatch"
        labels.counts[f"images_{why}"] += 1
        labels.counts["image_missing" if why == "missing" else why] += len(entry["objects"])
        labels.counts["boxes"] -= len(entry["objects"])
        labels.counts["negative_images"] -= not entry["objects"]
    if args.coco:
        labels.counts["images_not_in_labels"] = len(set(list_images(images_dir)) - set(names))
    settings = {"labels": {"format": labels.format, "file": str(labels_file), "digest": labels.digest()},
                "captioner_model": args.captioner_model, "class_map": class_map.to_dict(),
                "prompts": prompt_book.to_dict(), **describe_settings(args),
                "model_files": {"captioner_model": model_identity(args.captioner_model)}}
    meta = {"tool": "vlm_annotation/import_labels.py", "version": TOOL_VERSION, "images_dir": str(images_dir),
            "labels_report": {k: v for k, v in sorted(labels.counts.items()) if v}}
    return run_annotation(
        args, images_dir, names,
        lambda device: LabelAnnotator(labels, Describer(args, device, prompt_book, labels.vocabulary)),
        settings, meta, start, skip, "; " + summary_text(labels.counts))


if __name__ == "__main__":
    sys.exit(main())
