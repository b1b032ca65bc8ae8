"""Boxes: the one place that converts, formats and parses them.

Pixel boxes are ``[x1, y1, x2, y2]`` in the displayed image (after EXIF rotation).
LLaVA-1.5 sees the image padded to a square (centred, padding in the processor's image
mean), so its text normalizes a box to that square: ``[0.12, 0.34, 0.56, 0.78]``, two
decimals (:func:`box_to_text`). Every model family's frame (:class:`vlm_core.families.BoxFrame`,
LLaVA-1.5's among them) maps pixels to its numbers with the functions here, and
:func:`find_boxes` / :func:`first_box` read a box back in any family's notation.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from PIL import Image

BOX_DECIMALS = 2
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
BOX_PATTERN = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")   # "[x1, y1, x2, y2]"
# Qwen2-VL's "(x1,y1),(x2,y2)" (its <|box_start|> tokens may be decoded away) and Qwen2.5/3-VL's JSON answer.
_PAIR_BOX = re.compile(r"\(" + _NUM + "," + _NUM + r"\)\s*,?\s*\(" + _NUM + "," + _NUM + r"\)")
_JSON_BOX = re.compile(r'"bbox_2d"\s*:\s*' + BOX_PATTERN.pattern)


def clip_box(box: Sequence[float], width: float, height: float) -> list[float]:
    """Clip a pixel box to the image; coordinates are reordered so x1 <= x2, y1 <= y2."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
            min(max(x2, 0.0), width), min(max(y2, 0.0), height)]


def box_area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def is_degenerate(box: Sequence[float], min_size: float = 1.0) -> bool:
    """True when a box is thinner than ``min_size`` (pixels) in either direction."""
    return (box[2] - box[0]) < min_size or (box[3] - box[1]) < min_size


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (any common unit)."""
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix2 - ix1) * max(0.0, iy2 - iy1)
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def pixel_to_normalized(box: Sequence[float], width: float, height: float,
                        extent: tuple[float, float] = (1.0, 1.0)) -> list[float]:
    """Pixels -> 0..extent of the image itself (not padded): 0..1 for fusion, 0..1000 or the
    resized image's pixels for the box frames of other model families (vlm_core.families)."""
    fx, fy = extent
    return [box[0] * fx / width, box[1] * fy / height, box[2] * fx / width, box[3] * fy / height]


def normalized_to_pixel(box: Sequence[float], width: float, height: float,
                        extent: tuple[float, float] = (1.0, 1.0)) -> list[float]:
    """Inverse of :func:`pixel_to_normalized` (not clipped)."""
    fx, fy = extent
    return [box[0] * width / fx, box[1] * height / fy, box[2] * width / fx, box[3] * height / fy]


def pixel_to_yolo(box: Sequence[float], width: float, height: float) -> list[float]:
    """A pixel box as a YOLO label line's numbers: ``[x_center, y_center, w, h]`` in 0..1 of the image."""
    x1, y1, x2, y2 = box
    return [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]


def yolo_to_normalized(x_center: float, y_center: float, w: float, h: float) -> list[float]:
    """A YOLO label's ``x_center y_center w h`` as ``[x1, y1, x2, y2]`` in 0..1 of the image."""
    return [x_center - w / 2, y_center - h / 2, x_center + w / 2, y_center + h / 2]


def square_offsets(width: float, height: float) -> tuple[float, float, float]:
    """Side of the padded square and the (x, y) offset of the image inside it."""
    # Integer offsets, the same ones pad_to_square pastes the image at.
    width, height = int(round(width)), int(round(height))
    side = max(width, height)
    return float(side), float((side - width) // 2), float((side - height) // 2)


def pixel_to_square(box: Sequence[float], width: float, height: float) -> list[float]:
    """Pixels of the image -> 0..1 of the image padded (centred) to a square."""
    side, dx, dy = square_offsets(width, height)
    return [(box[0] + dx) / side, (box[1] + dy) / side, (box[2] + dx) / side, (box[3] + dy) / side]


def square_to_pixel(box: Sequence[float], width: float, height: float) -> list[float]:
    """Inverse of :func:`pixel_to_square`; the result is clipped to the image."""
    side, dx, dy = square_offsets(width, height)
    raw = [box[0] * side - dx, box[1] * side - dy, box[2] * side - dx, box[3] * side - dy]
    return clip_box(raw, width, height)


def format_box(norm_box: Sequence[float], decimals: int = BOX_DECIMALS) -> str:
    """``[0.1, 0.2, 0.3, 0.4]`` -> ``"[0.10, 0.20, 0.30, 0.40]"`` (values clamped to 0..1)."""
    vals = [min(max(float(v), 0.0), 1.0) for v in norm_box]
    return "[" + ", ".join(f"{v:.{decimals}f}" for v in vals) + "]"


def box_to_text(box: Sequence[float], width: float, height: float, decimals: int = BOX_DECIMALS) -> str:
    """A pixel box as the text the model reads and writes (padded-square frame)."""
    return format_box(pixel_to_square(box, width, height), decimals)


def find_boxes(text: str) -> list[tuple[int, list[float]]]:
    """Every box written in ``text`` in any family's notation: (position, the four numbers as written).

    Lenient on purpose: a decoder that drops special tokens leaves Qwen2-VL's ``(x1,y1),(x2,y2)``
    bare, and a JSON answer may come fenced or as a list. The numbers are in the writer's frame.
    """
    found, taken = [], []
    for pattern in (_JSON_BOX, _PAIR_BOX, BOX_PATTERN):
        for m in pattern.finditer(text or ""):
            if any(s <= m.start() < e for s, e in taken):
                continue  # the [..] inside a "bbox_2d": [..] already read
            taken.append(m.span())
            found.append((m.start(), [float(g) for g in m.groups()]))
    return sorted(found, key=lambda item: item[0])


def first_box(text: str) -> list[float] | None:
    """The first box of ``text`` in its own frame's numbers (None if absent or inverted).

    Enough to score grounding without knowing the family or the image size: IoU does not change
    under the per-axis scaling and shifting that map every family's frame to pixels, as long as
    the reference and the answer are written in the same frame.
    """
    found = find_boxes(text)
    if not found:
        return None
    vals = found[0][1]
    return None if vals[2] < vals[0] or vals[3] < vals[1] else vals


def parse_box(text: str) -> list[float] | None:
    """The first ``[a, b, c, d]`` in ``text`` as floats, or None when there is none."""
    match = BOX_PATTERN.search(text or "")
    if match is None:
        return None
    return [float(g) for g in match.groups()]


def text_to_box(text: str, width: float, height: float) -> list[float] | None:
    """Parse a box from model text and map it back to pixels of the image; None if absent."""
    norm = parse_box(text)
    if norm is None:
        return None
    x1, y1, x2, y2 = norm
    if x2 < x1 or y2 < y1:
        return None
    return square_to_pixel(norm, width, height)


def pad_to_square(image: Image.Image, fill: Iterable[float] | tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Centre ``image`` on a square canvas of colour ``fill``.

    ``fill`` is either 0..255 ints or the processor's ``image_mean`` (0..1 floats), which
    is what LLaVA-1.5 pads with. Never crop: a centre crop would cut away edge objects.
    """
    fill = tuple(fill)
    if all(isinstance(v, float) and v <= 1.0 for v in fill):
        # int(), not round(): the colour LLaVA's own expand2square pads with.
        fill = tuple(int(v * 255) for v in fill)
    width, height = image.size
    if width == height:
        return image
    side, dx, dy = square_offsets(width, height)
    canvas = Image.new(image.mode, (int(side), int(side)), fill if image.mode == "RGB" else fill[0])
    canvas.paste(image, (int(dx), int(dy)))
    return canvas
