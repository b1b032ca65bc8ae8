"""Converted records for other trainers: LLaMA-Factory, ms-swift, and the square images they need.

``convert_to_llava_format.py`` is the command line (``--llamafactory_dir``, ``--swift_dir``,
``--square_images_dir``); docs/interop.md gives the training commands.

Why square images: our LLaVA-1.5 boxes are measured on the image padded (centred) to a square in the
processor's mean colour, which is what this toolkit's training and original LLaVA's ``--image_aspect_ratio
pad`` feed the model. LLaMA-Factory and ms-swift hand the image to the CLIP processor as it is, which resizes
its short side and centre-crops: on a 128x80 image the sides are cut away and the boxes point past them. Given
the image already padded to a square (:func:`square_image`, the same function training pads with), the crop
cuts nothing and every pixel sits where its box says.

LLaMA-Factory reads its ShareGPT format (``messages`` with ``role``/``content``, ``images``, ``system``),
registered in a ``dataset_info.json`` beside it; the image paths stay relative to the images folder
(LLaMA-Factory's ``media_dir``). ms-swift reads its own format: ``messages``, ``images`` (paths as given:
absolute when the folder is known) and, for grounding, ``objects``: ``{"ref": [labels], "bbox": [[x1, y1, x2,
y2], ...], "bbox_type": "real"}``, pixel boxes of the image it loads, one per ``<bbox>`` tag of the text in
order; ms-swift writes each box in its template's own notation (``swift/template/base.py``:
``normalize_bbox``, ``replace_bbox``).
"""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from vlm_core import families
from vlm_core.boxes import square_offsets
from vlm_core.images import ImageLoadError, load_image
from vlm_core.io_utils import atomic_output, write_json_atomic
from vlm_core.llava_format import IMAGE_PLACEHOLDER, IMAGE_TOKEN, resolve_image_path
from vlm_core.schema import placeholder_ids, render_placeholders

# LLaVA-1.5's image mean (OpenAI CLIP's), what llava-hf/llava-1.5-* pad with: used when the base model's
# processor config is not on this machine.
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
SWIFT_BOX_TAG = "<bbox>"
_ROLES = {"human": "user", "gpt": "assistant"}


def image_mean(base_model: str) -> tuple[float, ...]:
    """The processor's ``image_mean`` of a base model folder (or of a hub id in the local cache), without loading
    the processor; LLaVA-1.5's for a hub id never downloaded."""
    path = Path(str(base_model))
    config = families._saved_image_processor(path) if path.is_dir() else None
    if config is None and not path.is_dir():
        for name in ("processor_config.json", "preprocessor_config.json"):
            cached = families._cached_hub_file(str(base_model), name)
            if cached:
                config = families._saved_image_processor(cached.parent)
                break
    mean = (config or {}).get("image_mean")
    if isinstance(mean, (list, tuple)) and len(mean) == 3 and all(isinstance(v, (int, float)) for v in mean):
        return tuple(float(v) for v in mean)
    return CLIP_IMAGE_MEAN


def square_image(image: Image.Image, frame: families.BoxFrame, fill) -> Image.Image:
    """The image as training feeds it to the model: the frame's preparation (LLaVA-1.5: padded to a square
    in ``fill``, the processor's mean)."""
    return frame.prepare_image(image, fill)


class SquareImages:
    """Write each record's image, upright and padded to a square, under ``out_dir`` at the same relative path
    (same format; JPEGs at quality 95); once per image."""

    def __init__(self, image_dir: Path, out_dir: Path, frame: families.BoxFrame, fill):
        self.image_dir, self.out_dir, self.frame, self.fill = image_dir, out_dir, frame, fill
        self.done: set[str] = set()
        self.written = self.missing = 0

    def add(self, rel: str, where: str) -> None:
        if rel in self.done:
            return
        self.done.add(rel)
        try:
            src = resolve_image_path(self.image_dir, rel, where)
            image = load_image(src)
        except (ImageLoadError, OSError) as e:
            self.missing += 1
            print(f"warning: {where}: {rel}: {e}; no square image written")
            return
        with Image.open(src) as original:
            fmt = original.format or "PNG"
        options = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
        dst = self.out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(dst) as tmp:
            square_image(image, self.frame, self.fill).save(tmp, format=fmt, **options)
        self.written += 1

    def report(self) -> str:
        missing = f", {self.missing} image(s) not found or unreadable" if self.missing else ""
        return (f"square images: {self.written} written -> {self.out_dir} (give it to LLaMA-Factory / ms-swift as "
                f"the image folder){missing}")


def llamafactory_record(record: dict, system: str) -> dict:
    """A LLaVA record in LLaMA-Factory's ShareGPT layout (``messages``/``images``/``system``), text unchanged."""
    messages = [{"role": _ROLES[turn["from"]], "content": turn["value"]} for turn in record["conversations"]]
    # LLaMA-Factory's llava plugin puts the image where <image> stands; our "<image>\n" keeps LLaVA's newline.
    out = {"messages": messages, "images": [record["image"]]}
    if system:
        out["system"] = system
    return out


def llamafactory_dataset_info(name: str, file_name: str, with_system: bool) -> dict:
    """The ``dataset_info.json`` entry that registers the file under ``name``."""
    columns = {"messages": "messages", "images": "images"}
    if with_system:
        columns["system"] = "system"
    return {name: {"file_name": file_name, "formatting": "sharegpt", "columns": columns,
                   "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                            "assistant_tag": "assistant", "system_tag": "system"}}}


def write_llamafactory_info(out_dir: Path, name: str, file_name: str, with_system: bool) -> Path:
    """Add (or replace) the dataset's entry in ``out_dir/dataset_info.json``, keeping the other entries."""
    import json
    path = out_dir / "dataset_info.json"
    info = {}
    if path.is_file():
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
        except ValueError:
            info = {}
        if not isinstance(info, dict):
            info = {}
    info.update(llamafactory_dataset_info(name, file_name, with_system))
    write_json_atomic(path, info)
    return path


def swift_record(marked: dict, objects: dict, system: str, image_path: str, offset: tuple[float, float]) -> dict:
    """A record rendered with box placeholders (``<box:ID>``, :func:`vlm_training.conversion.image_records`
    with ``mark_boxes``) in ms-swift's grounding format: each placeholder becomes ``<bbox>`` and its object's
    pixel box (shifted by ``offset``, the image's place in the square picture ms-swift gets) goes to
    ``objects`` in the order of the text, as ms-swift reads them."""
    refs, bboxes = [], []
    dx, dy = offset

    def tag(oid: int) -> str:
        obj = objects[oid]
        x1, y1, x2, y2 = obj["bbox"]
        refs.append(obj["label"])
        bboxes.append([round(x1 + dx, 2), round(y1 + dy, 2), round(x2 + dx, 2), round(y2 + dy, 2)])
        return SWIFT_BOX_TAG

    messages = [{"role": "system", "content": system}] if system else []
    for turn in marked["conversations"]:
        text = turn["value"]
        if text.startswith(IMAGE_PLACEHOLDER):  # ms-swift's llava templates write "<image>\n" for the tag themselves
            text = IMAGE_TOKEN + text[len(IMAGE_PLACEHOLDER):]
        messages.append({"role": _ROLES[turn["from"]], "content": render_placeholders(text, tag)})
    out = {"messages": messages, "images": [image_path]}
    if bboxes:
        out["objects"] = {"ref": refs, "bbox": bboxes, "bbox_type": "real"}
    return out


def swift_offset(record: dict, squared: bool) -> tuple[float, float]:
    """Where the image sits in the picture ms-swift loads: (dx, dy) inside the padded square, else (0, 0)."""
    if not squared:
        return 0.0, 0.0
    _, dx, dy = square_offsets(record["width"], record["height"])
    return dx, dy


def has_boxes(record: dict) -> bool:
    return any(placeholder_ids(t["value"]) for t in record["conversations"])


def swift_image_path(rel: str, folder: Path | None) -> str:
    """The path ms-swift opens (relative to where it runs, so absolute when the folder is known)."""
    return rel if folder is None else os.path.join(os.path.abspath(folder), rel)
