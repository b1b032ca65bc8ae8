"""Words for where a box is: a 3x3 grid position, a size, and relations between two boxes.

Everything works on pixel boxes ``[x1, y1, x2, y2]`` of the displayed image, from the
box centre, so the same box always gets the same words.
"""
from __future__ import annotations

from typing import Sequence

# Rows (top / middle / bottom) x columns (left / centre / right) of a 3x3 grid.
_GRID = (("top left", "top", "top right"),
         ("left", "centre", "right"),
         ("bottom left", "bottom", "bottom right"))
# Area fractions of the image at which a box stops being small / medium-sized.
SMALL_AREA, LARGE_AREA = 0.02, 0.15
# Centres closer than this (fraction of the image side) are "next to" each other.
NEXT_TO_DISTANCE = 0.1

RELATION_PHRASES = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
    "next to": "next to",
}


def centre(box: Sequence[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def _third(value: float, extent: float) -> int:
    if extent <= 0:
        return 1
    return min(2, max(0, int(3 * value / extent)))


def position_word(box: Sequence[float], width: float, height: float) -> str:
    """"top left", "top", ..., "centre", ..., "bottom right" from the box centre."""
    cx, cy = centre(box)
    return _GRID[_third(cy, height)][_third(cx, width)]


def position_phrase(box: Sequence[float], width: float, height: float) -> str:
    """"in the bottom left of the image", "at the top of the image", "on the left of the image"."""
    word = position_word(box, width, height)
    if word in ("top", "bottom"):
        return f"at the {word} of the image"
    if word in ("left", "right"):
        return f"on the {word} of the image"
    return f"in the {word} of the image"


def size_word(box: Sequence[float], width: float, height: float) -> str:
    """"small", "medium-sized" or "large", by the share of the image the box covers."""
    area = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
    share = area / (width * height) if width > 0 and height > 0 else 0.0
    if share < SMALL_AREA:
        return "small"
    if share < LARGE_AREA:
        return "medium-sized"
    return "large"


def relation(a: Sequence[float], b: Sequence[float], width: float, height: float) -> str:
    """Where box ``a`` is relative to box ``b``: left of / right of / above / below / next to.

    Offsets are measured between centres as fractions of the image; the larger of the
    horizontal and vertical offset decides, and centres that nearly coincide are "next to".
    """
    (ax, ay), (bx, by) = centre(a), centre(b)
    dx = (ax - bx) / width if width > 0 else 0.0
    dy = (ay - by) / height if height > 0 else 0.0
    if max(abs(dx), abs(dy)) < NEXT_TO_DISTANCE:
        return "next to"
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def relation_phrase(a: Sequence[float], b: Sequence[float], width: float, height: float) -> str:
    """"to the left of", "above", "next to", ... (ready to put before "the bottle")."""
    return RELATION_PHRASES[relation(a, b, width, height)]


def nearest(index: int, boxes: Sequence[Sequence[float]], k: int) -> list[int]:
    """Indices of the ``k`` boxes whose centres are nearest to ``boxes[index]`` (ties: lower index)."""
    cx, cy = centre(boxes[index])
    others = [j for j in range(len(boxes)) if j != index]
    others.sort(key=lambda j: ((centre(boxes[j])[0] - cx) ** 2 + (centre(boxes[j])[1] - cy) ** 2, j))
    return others[:k]
