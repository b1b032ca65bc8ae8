"""Export an annotation file to COCO json or an Ultralytics YOLO dataset, to review, correct or train on.

    python vlm_annotation/export_annotations.py --annotation_file annotations.json \\
        --format coco --output_file annotations_coco.json

    python vlm_annotation/export_annotations.py --annotation_file annotations.json \\
        --format yolo --output_dir yolo_dataset --images_dir data/images
    yolo train data=yolo_dataset/data.yaml model=yolov8n.pt epochs=10

COCO: what ``pycocotools.coco.COCO``, CVAT, Label Studio and FiftyOne import. Categories get
ids 1..K (sorted names), images keep their relative ``file_name``, width and height; each
annotation keeps its detection score in ``score`` (COCO's results field) and its description
and detectors in ``attributes``. Images without objects stay (negatives); skipped ones do not.

YOLO: ``data.yaml`` (absolute ``path``, ``names``), ``labels/train/<name>.txt`` with
``class x_center y_center width height`` normalized to 6 decimals (Ultralytics' training
labels have no score column), and ``images/train/<name>`` as symlinks to the images (or
copies with ``--copy_images``). ``val`` is the same images unless ``--val_annotation_file``
gives a validation split (e.g. split_data.py's val.json), which goes to ``images/val``.
``--min_score`` leaves out objects scoring below it in both formats. YOLO names a label file after
its image's stem, so two images of one folder that differ only by extension (``scene.jpg``,
``scene.png``) cannot both be exported: the export refuses and names them, instead of giving one
image the other's boxes. With ``--copy_images`` the images folder must be given (``--images_dir``):
the folder a received file's ``meta.images_dir`` names is never copied from. One export per
``--output_dir`` at a time; a killed export's hidden temp folder is removed by the next one.

``import_labels.py`` reads both back: the boxes come back the same, to 0.01 px (COCO) or
the 6 decimals of YOLO's normalized coordinates.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from vlm_core.boxes import pixel_to_yolo
from vlm_core.flags import ANNOTATION_FILE, IMAGES_DIR, flag_names
from vlm_core.io_utils import InputError, write_json_atomic
from vlm_core.runtime import (
    plural,
    report_input_errors,
    require_output_dir,
    require_output_file,
    require_path,
    single_writer,
)
from vlm_core.schema import load_annotations

BOX_DECIMALS = 2      # the annotation file's own precision (data_annotation.BOX_DECIMALS)
YOLO_DECIMALS = 6


def categories_of(records: list[dict], min_score: float = 0.0) -> list[str]:
    return sorted({o["label"] for r in records for o in r["objects"] if o["score"] >= min_score})


def to_coco(records: list[dict], min_score: float = 0.0, source: str = "") -> dict:
    """An annotation file's images as a COCO detection dict (ids from 1, in file order)."""
    names = categories_of(records, min_score)
    category_id = {n: i for i, n in enumerate(names, start=1)}
    images, annotations = [], []
    for image_id, rec in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": rec["image"], "width": rec["width"], "height": rec["height"]})
        for o in rec["objects"]:
            if o["score"] < min_score:
                continue
            x1, y1, x2, y2 = o["bbox"]
            w, h = round(x2 - x1, BOX_DECIMALS), round(y2 - y1, BOX_DECIMALS)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id[o["label"]],
                "bbox": [x1, y1, w, h], "area": round(w * h, 4), "iscrowd": 0, "score": o["score"],
                "attributes": {"description": o.get("description", ""), "sources": ",".join(o["sources"])}})
    return {"info": {"description": f"exported from {source} by vlm_annotation/export_annotations.py"},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": "object"} for n, i in category_id.items()]}


def yolo_line(class_id: int, bbox, width: int, height: int) -> str:
    values = pixel_to_yolo(bbox, width, height)
    return f"{class_id} " + " ".join(f"{v:.{YOLO_DECIMALS}f}" for v in values)


def check_label_names(splits: dict[str, list[dict]]) -> None:
    """Refuse images that would share a label file: YOLO finds ``labels/<split>/a/scene.txt`` for both
    ``a/scene.jpg`` and ``a/scene.png``, so one image would silently get the other's boxes."""
    for split, records in splits.items():
        seen: dict[str, str] = {}
        for rec in records:
            key = Path(rec["image"]).with_suffix("").as_posix()
            if key in seen:
                raise InputError(f"--format yolo: {seen[key]} and {rec['image']} would share the label file "
                                 f"labels/{split}/{key}.txt (YOLO names labels by the image's stem); rename one "
                                 "of them, or export COCO")
            seen[key] = rec["image"]


def _stale_export_dirs(out: Path) -> list[Path]:
    """Hidden temp folders of killed exports to ``out`` (call with ``out``'s lock held: no live writer)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    if not out.parent.is_dir():
        return []
    return [p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]


def write_yolo(out: Path, splits: dict[str, list[dict]], images_dir: Path, copy: bool, min_score: float,
               final: Path | None = None) -> dict:
    """Write the dataset into ``out`` (an empty or new folder), which will be at ``final``; return counts."""
    names = categories_of([r for recs in splits.values() for r in recs], min_score)
    class_id = {n: i for i, n in enumerate(names)}
    counts = {"images": 0, "objects": 0}
    check_label_names(splits)
    for split, records in splits.items():
        for rec in records:
            source = (images_dir / rec["image"]).resolve()
            image = out / "images" / split / rec["image"]
            label = (out / "labels" / split / rec["image"]).with_suffix(".txt")
            image.parent.mkdir(parents=True, exist_ok=True)
            label.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(source, image)
            else:
                os.symlink(source, image)
            lines = [yolo_line(class_id[o["label"]], o["bbox"], rec["width"], rec["height"])
                     for o in rec["objects"] if o["score"] >= min_score]
            label.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            counts["images"] += 1
            counts["objects"] += len(lines)
    import yaml
    val = "val" if "val" in splits else "train"
    header = "# Ultralytics detection dataset written by vlm_annotation/export_annotations.py\n" + \
        ("# val is the training images: no --val_annotation_file was given\n" if val == "train" else "")
    data = {"path": str((final or out).resolve()), "train": "images/train", "val": f"images/{val}",
            "names": dict(enumerate(names))}
    (out / "data.yaml").write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                                   encoding="utf-8")
    counts["classes"] = len(names)
    return counts


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(*flag_names("--annotation_file", ANNOTATION_FILE), required=True, help="annotation file to export (JSON of this toolkit)")
    p.add_argument("--format", required=True, choices=("coco", "yolo"), help="COCO json or Ultralytics YOLO dataset")
    p.add_argument("--output_file", default=None, help="COCO json to write (with --format coco)")
    p.add_argument("--output_dir", default=None,
                   help="folder of the YOLO dataset to write (with --format yolo; new or empty)")
    p.add_argument(*flag_names("--images_dir", IMAGES_DIR), default=None,
                   help="folder of the images (YOLO: linked or copied; default: meta.images_dir of the file)")
    p.add_argument("--copy_images", action="store_true", help="YOLO: copy the images instead of symlinking them")
    p.add_argument("--val_annotation_file", default=None,
                   help="YOLO: a validation annotation file (e.g. split_data.py's val.json) for images/val "
                        "(default: validate on the training images)")
    p.add_argument("--min_score", type=float, default=0.0, help="leave out objects scoring below this (default 0)")
    args = p.parse_args(argv)
    checks = [
        (args.format != "coco" or args.output_file is not None, "--format coco needs --output_file"),
        (args.format != "yolo" or args.output_dir is not None, "--format yolo needs --output_dir"),
        (args.format == "yolo" or (args.output_dir is None and not args.copy_images
                                   and args.val_annotation_file is None),
         "--output_dir, --copy_images and --val_annotation_file are for --format yolo"),
        (args.format == "coco" or args.output_file is None, "--output_file is for --format coco (use --output_dir)"),
        (0.0 <= args.min_score <= 1.0, "--min_score must be between 0 and 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    source = require_path(args.annotation_file, "--annotation_file", "file")
    if args.format == "coco":
        require_output_file(args.output_file, "--output_file", {"--annotation_file": source})
    if args.val_annotation_file:
        require_path(args.val_annotation_file, "--val_annotation_file", "file")
    return args


def _export_yolo(args, data: dict) -> tuple[Path, dict]:
    images_dir = args.images_dir or data.get("meta", {}).get("images_dir")
    if not images_dir:
        raise InputError(f"--images_dir is required: {args.annotation_file} has no meta.images_dir")
    if args.copy_images and not args.images_dir:
        # A received file names any folder it likes in meta.images_dir: copy only from a folder the user named.
        raise InputError(f"--copy_images needs --images_dir (the file's meta.images_dir says {images_dir!r}; "
                         "give it as --images_dir if that is the folder you mean)")
    images_dir = require_path(images_dir, "--images_dir", "dir")
    splits = {"train": data["images"]}
    if args.val_annotation_file:
        splits["val"] = load_annotations(args.val_annotation_file)["images"]
    out = require_output_dir(args.output_dir, "--output_dir", {"--images_dir": images_dir})
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"--output_dir: {out} is not empty; give a new folder")
    for split, records in splits.items():
        for rec in records:
            if not (images_dir / rec["image"]).is_file():
                flag = "--val_annotation_file" if split == "val" else "--annotation_file"
                raise InputError(f"--images_dir: {rec['image']} (an image of {flag}) is not in {images_dir}")
    # Written in a hidden folder beside it and renamed: a killed export leaves no half dataset.
    out.parent.mkdir(parents=True, exist_ok=True)
    with single_writer(out, "--output_dir"):
        for stale in _stale_export_dirs(out):
            shutil.rmtree(stale, ignore_errors=True)
        return _write_yolo_dataset(args, out, splits, images_dir)


def _write_yolo_dataset(args, out: Path, splits: dict, images_dir: Path) -> tuple[Path, dict]:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        counts = write_yolo(tmp, splits, images_dir, args.copy_images, args.min_score, out)
        try:
            if out.is_dir():
                out.rmdir()
            os.replace(tmp, out)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise InputError(f"--output_dir: {out} was filled by another run meanwhile; give a new folder") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "data.yaml", counts


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    source = Path(args.annotation_file)
    data = load_annotations(source)
    if args.format == "coco":
        coco = to_coco(data["images"], args.min_score, str(source))
        write_json_atomic(args.output_file, coco, indent=None)
        where = args.output_file
        counts = {"images": len(coco["images"]), "objects": len(coco["annotations"]),
                  "classes": len(coco["categories"])}
    else:
        where, counts = _export_yolo(args, data)
    print(f"exported {plural(counts['images'], 'image')}, {plural(counts['objects'], 'object')}, "
          f"{plural(counts['classes'], 'class', 'classes')} "
          f"as {args.format.upper()} -> {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
