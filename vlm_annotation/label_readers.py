"""Labels you already have, read into one shape: COCO json (:func:`read_coco`) and YOLO datasets
(:func:`read_yolo`) become a :class:`LabelSet` of pixel boxes per image, with every dropped box counted by
reason. Used by import_labels.py (to describe them) and evaluate_annotations.py (as ground truth).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vlm_annotation.detectors import LABELS_SOURCE, ClassMap
from vlm_annotation.engine import (
    BOX_DECIMALS,
)
from vlm_core.boxes import clip_box, normalized_to_pixel, yolo_to_normalized
from vlm_core.images import is_image_file, list_images
from vlm_core.io_utils import InputError, read_json, read_text
from vlm_core.schema import AnnotationError

# Why boxes were dropped, as the summary line says it (singular, plural).
DROP_REASONS = {
    "iscrowd": ("iscrowd region", "iscrowd regions"),
    "zero_area": ("zero-area box", "zero-area boxes"),
    "outside_image": ("box entirely outside its image", "boxes entirely outside their image"),
    "class_map_null": ("box of a class mapped to null by --class_map",
                       "boxes of classes mapped to null by --class_map"),
    "image_missing": ("box of an image missing on disk", "boxes of images missing on disk"),
    "size_mismatch": ("box of an image whose size differs from the labels'",
                      "boxes of images whose size differs from the labels'"),
}


@dataclass
class LabelSet:
    """Labels read from a COCO file or a YOLO dataset, in pixels of each image.

    ``images``: image name -> ``{"width", "height", "objects": [{"label", "bbox"}], "crowd": [...]}``
    (``crowd``: the iscrowd regions, which evaluation treats as "ignore"); ``unreadable``: images
    whose size could not be read (YOLO), with the reason; ``counts``: what was clipped / dropped.
    """
    file: str
    format: str
    images: dict[str, dict]
    vocabulary: list[str]
    counts: Counter = field(default_factory=Counter)
    unreadable: dict[str, str] = field(default_factory=dict)
    root: Path | None = None  # YOLO: the folder the image names count from

    def digest(self) -> str:
        """Changes whenever the boxes do: a resumed run must describe the same labels."""
        text = json.dumps(self.images, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _relative_name(name: str, file, where: str) -> str:
    clean = name.replace("\\", "/")
    while clean.startswith("./"):
        clean = clean[2:]
    if not clean or clean.startswith("/") or ".." in clean.split("/") or (len(clean) > 1 and clean[1] == ":") \
            or "\x00" in clean:
        raise AnnotationError(file, where, f"{name!r} must be a path relative to the images folder")
    return clean


def _add_box(entry: dict, label: str | None, box: list[float], counts: Counter) -> None:
    """Clip a pixel box ``[x1, y1, x2, y2]`` to its image and keep it unless it is empty."""
    if label is None:
        counts["class_map_null"] += 1
        return
    if box[2] <= box[0] or box[3] <= box[1]:
        counts["zero_area"] += 1
        return
    clipped = clip_box(box, float(entry["width"]), float(entry["height"]))
    rounded = [round(v, BOX_DECIMALS) for v in clipped]
    if rounded[2] <= rounded[0] or rounded[3] <= rounded[1]:
        counts["outside_image"] += 1
        return
    if clipped != box:
        counts["clipped"] += 1
    entry["objects"].append({"label": label, "bbox": rounded})


def _finish(images: dict[str, dict], counts: Counter) -> None:
    for entry in images.values():
        # The order data_annotation.py gives objects of equal score: top to bottom, left to right.
        entry["objects"].sort(key=lambda o: (o["bbox"][1], o["bbox"][0], o["label"]))
        counts["boxes"] += len(entry["objects"])
        counts["negative_images"] += not entry["objects"]


def load_coco(path: str | os.PathLike) -> dict:
    """A COCO detection json as it is on disk, checked field by field first: images (id, relative file_name,
    width, height), categories (id, name) and annotations (image_id, category_id of a listed image and category,
    bbox of four finite numbers, iscrowd 0 or 1). Anything else is an :class:`AnnotationError` naming the file
    and the JSON path of the field (``annotations[3].bbox``), which a stage reports as one line, exit code 2."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(path, "(top level)", "expected a COCO object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise AnnotationError(path, key, "missing (not a COCO detection file)")
        if not isinstance(data[key], list):
            raise AnnotationError(path, key, "expected a list")
    categories: set = set()
    for i, c in enumerate(data["categories"]):
        where = f"categories[{i}]"
        if not isinstance(c, dict):
            raise AnnotationError(path, where, "expected an object")
        if not _is_int(c.get("id")):
            raise AnnotationError(path, f"{where}.id", "expected an integer")
        if not isinstance(c.get("name"), str) or not c["name"].strip():
            raise AnnotationError(path, f"{where}.name", "expected a non-empty string")
        if c["id"] in categories:
            raise AnnotationError(path, f"{where}.id", f"duplicate category id {c['id']}")
        categories.add(c["id"])
    names: set[str] = set()
    image_ids: set = set()
    for i, im in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(im, dict):
            raise AnnotationError(path, where, "expected an object")
        image_id = im.get("id")
        if not (_is_int(image_id) or isinstance(image_id, str)):
            raise AnnotationError(path, f"{where}.id", "expected an integer (or string) id")
        if image_id in image_ids:
            raise AnnotationError(path, f"{where}.id", f"duplicate image id {image_id!r}")
        if not isinstance(im.get("file_name"), str):
            raise AnnotationError(path, f"{where}.file_name", "expected a string")
        name = _relative_name(im["file_name"], path, f"{where}.file_name")
        if name in names:
            raise AnnotationError(path, f"{where}.file_name", f"{name!r} listed twice")
        for key in ("width", "height"):
            if not _is_int(im.get(key)) or im[key] <= 0:
                raise AnnotationError(path, f"{where}.{key}", "expected a positive integer")
        names.add(name)
        image_ids.add(image_id)
    for i, a in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            raise AnnotationError(path, where, "expected an object")
        image_id, category_id = a.get("image_id"), a.get("category_id")
        if not (_is_int(image_id) or isinstance(image_id, str)) or image_id not in image_ids:
            raise AnnotationError(path, f"{where}.image_id", f"no image with id {a.get('image_id')!r}")
        if not _is_int(category_id) or category_id not in categories:
            raise AnnotationError(path, f"{where}.category_id", f"no category with id {a.get('category_id')!r}")
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise AnnotationError(path, f"{where}.bbox", "expected [x, y, width, height], four finite numbers")
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise AnnotationError(path, f"{where}.iscrowd", "expected 0 or 1")
    return data


def read_coco(path: str | os.PathLike, class_map: ClassMap | None = None) -> LabelSet:
    """A COCO detection json, checked field by field (:func:`load_coco`: errors name the JSON path)."""
    class_map = class_map or ClassMap()
    data = load_coco(path)
    categories = {c["id"]: class_map(LABELS_SOURCE, c["name"]) for c in data["categories"]}
    images: dict[str, dict] = {}
    by_id: dict = {}
    for i, im in enumerate(data["images"]):
        name = _relative_name(im["file_name"], path, f"images[{i}].file_name")
        images[name] = {"width": im["width"], "height": im["height"], "objects": [], "crowd": []}
        by_id[im["id"]] = name
    counts: Counter = Counter()
    for a in data["annotations"]:
        entry, label = images[by_id[a["image_id"]]], categories[a["category_id"]]
        x, y, w, h = (float(v) for v in a["bbox"])
        if a.get("iscrowd", 0):
            counts["iscrowd"] += 1
            if label is not None:
                entry["crowd"].append({"label": label, "bbox": [x, y, x + w, y + h]})
            continue
        _add_box(entry, label, [x, y, x + w, y + h], counts)
    _finish(images, counts)
    vocabulary = sorted({n for n in categories.values() if n})
    return LabelSet(str(path), "coco", images, vocabulary, counts)


def _load_yaml(path: Path) -> dict:
    import yaml
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise InputError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a YAML mapping with names and train/val")
    return data


def yolo_names(data: dict, path) -> dict[int, str]:
    names = data.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise InputError(f"{path}: names: expected a list or a mapping of class ids to names")
    out = {}
    for k, v in names.items():
        if not _is_int(k) or k < 0 or not isinstance(v, str) or not v.strip():
            raise InputError(f"{path}: names.{k}: expected a class id (integer) mapped to a non-empty name")
        out[k] = v
    return out


def yolo_root(data: dict, path: Path) -> Path:
    """The dataset folder: ``path`` of data.yaml (relative to the yaml's folder, else to Ultralytics'
    datasets dir, where Ultralytics looks), or the yaml's folder."""
    root = data.get("path")
    if not root:
        return path.parent.resolve()
    root = Path(str(root)).expanduser()
    if root.is_absolute():
        return root
    if (path.parent / root).is_dir():
        return (path.parent / root).resolve()
    from ultralytics.utils import DATASETS_DIR
    return (Path(DATASETS_DIR) / root).resolve()


def _split_images(entry, root: Path, path: Path, key: str) -> list[Path]:
    found: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        p = Path(str(item)).expanduser()
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            found += [p / n for n in list_images(p)]
        elif p.is_file() and p.suffix == ".txt":  # a list of image paths, as Ultralytics reads it
            for line in read_text(p).splitlines():
                line = line.strip()
                if line:
                    q = p.parent / line[2:] if line.startswith("./") else Path(line)
                    found.append(q if q.is_absolute() else root / q)
        else:
            raise InputError(f"{path}: {key}: {p} is neither an image folder nor a .txt list of images")
    return found


def yolo_label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the suffix ``.txt``."""
    text = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in text:
        text = sb.join(text.rsplit(sa, 1))
    return Path(text).with_suffix(".txt")


def displayed_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF rotation, from the file header (the pixels are not decoded)."""
    from PIL import Image
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _yolo_lines(label_file: Path, n_classes: dict[int, str]):
    """(line number, class id, [x1, y1, x2, y2] normalized) of each label line."""
    for n, line in enumerate(read_text(label_file).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            raise InputError(f"{label_file}: line {n}: expected 5 fields (class x_center y_center width height) "
                             f"or a polygon (class x1 y1 x2 y2 x3 y3 ...), got {len(fields)}")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise InputError(f"{label_file}: line {n}: fields must be numbers") from None
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"{label_file}: line {n}: fields must be finite numbers")
        cls = values[0]
        if cls != int(cls) or int(cls) not in n_classes:
            raise InputError(f"{label_file}: line {n}: class id {fields[0]} is not one of the names "
                             f"(0..{max(n_classes)})")
        if len(values) == 5:
            box = yolo_to_normalized(*values[1:])
        else:
            xs, ys = values[1::2], values[2::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        yield n, int(cls), box


def read_yolo(path: str | os.PathLike, images_dir: str | os.PathLike | None = None,
              class_map: ClassMap | None = None, splits: tuple[str, ...] = ("train", "val", "test")) -> LabelSet:
    """An Ultralytics detection dataset (data.yaml + image and label folders), boxes in pixels."""
    path = Path(path)
    class_map = class_map or ClassMap()
    data = _load_yaml(path)
    names = yolo_names(data, path)
    labels = {k: class_map(LABELS_SOURCE, v) for k, v in names.items()}
    root = yolo_root(data, path)
    base = Path(images_dir).resolve() if images_dir else root
    files: list[Path] = []
    for key in splits:
        if data.get(key):
            files += _split_images(data[key], root, path, key)
    if not any(data.get(k) for k in ("train", "val")):
        raise InputError(f"{path}: train/val: missing (no image folders)")
    images: dict[str, dict] = {}
    unreadable: dict[str, str] = {}
    counts: Counter = Counter()
    for image in files:
        absolute = Path(os.path.abspath(image))
        try:
            name = absolute.relative_to(base).as_posix()
        except ValueError:
            raise InputError(f"--images_dir: {image} (from {path}) is not inside {base}") from None
        if name in images or not is_image_file(name):
            continue  # one folder listed as both train and val
        label_file = yolo_label_path(absolute)
        parsed = list(_yolo_lines(label_file, names)) if label_file.is_file() else []
        try:
            width, height = displayed_size(absolute)
        except FileNotFoundError:  # listed in a .txt split file, not on disk
            width = height = 0
            unreadable[name] = f"listed in {path.name} but not found: {absolute}"
            counts["images_missing"] += 1
        except Exception as e:  # Pillow raises many kinds for a bad file
            width = height = 0
            unreadable[name] = f"cannot read the image size: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        entry = {"width": width, "height": height, "objects": [], "crowd": []}
        images[name] = entry
        if not width:
            counts["image_missing"] += len(parsed)
            continue
        for _, cls, b in parsed:
            _add_box(entry, labels[cls], normalized_to_pixel(b, width, height), counts)
    _finish(images, counts)
    vocabulary = sorted({n for n in labels.values() if n})
    return LabelSet(str(path), "yolo", images, vocabulary, counts, unreadable, base)
