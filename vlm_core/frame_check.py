"""Is a model answering grounding questions in its family's box frame? The share of its grounding answers
that hold no box, and of those whose box lies outside the image, per family.

A wrong frame rarely fails loudly: data converted for another family, a base model of another family, or
Qwen2.5-VL's resized pixels read as 0..1000 all give boxes that parse, score a low IoU and look like a weak
model. What gives them away is where they fall: a LLaVA-1.5 box in the padding of its square, a 0..1000 box
on a Qwen2.5-VL image of 300 pixels, numbers above 1 in a 0..1 frame. ``predict.py`` prints these shares
in its summary line and ``evaluate.py`` writes them to ``metrics.json`` (``grounding``); above
:data:`WARN_SHARE` each warns in one line on stderr.

A box is outside when one of its numbers lies beyond the image's extent in the frame
(:meth:`vlm_core.families.BoxFrame.image_bounds`) by more than one rounding step of the frame
(:attr:`~vlm_core.families.BoxFrame.step`), so an answer off by the last digit is not counted. An answer
whose box is inverted (x2 < x1) does not parse as a box (:func:`vlm_core.boxes.first_box`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from vlm_core.boxes import first_box
from vlm_core.families import BoxFrame

WARN_SHARE = 0.05          # above this share of unparsed or outside answers, a family is warned about
UNKNOWN_FAMILY = "unknown"  # predictions that do not say which frame they were asked in
# What predict.py adds to a grounding prediction line, so evaluate.py can tell where its box falls.
FRAME_FIELD, SIZE_FIELD = "box_frame", "image_size"

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height on display


def displayed_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed (after its EXIF rotation), from its header only."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED:
            width, height = height, width
    return width, height


def box_outside(values: Sequence[float], frame: BoxFrame, width: float, height: float) -> bool:
    """Whether a box in ``frame``'s numbers reaches beyond the image by more than one rounding step."""
    x_lo, y_lo, x_hi, y_hi = frame.image_bounds(width, height)
    tol = frame.step
    x1, y1, x2, y2 = values
    return (min(x1, x2) < x_lo - tol or min(y1, y2) < y_lo - tol
            or max(x1, x2) > x_hi + tol or max(y1, y2) > y_hi + tol)


@dataclass
class FrameCheck:
    """Running counts of grounding answers per family: all, without a box, with a box outside the image."""
    counts: dict[str, list[int]] = field(default_factory=dict)   # family -> [n, unparsed, outside, checked]

    def add(self, answer: str, frame: BoxFrame | None, width: float | None = None,
            height: float | None = None) -> None:
        """One grounding answer; without a frame and image size only "no box" can be told."""
        family = frame.family if frame is not None else UNKNOWN_FAMILY
        row = self.counts.setdefault(family, [0, 0, 0, 0])
        row[0] += 1
        values = first_box(answer)
        if values is None:
            row[1] += 1
        elif frame is not None and width and height:
            row[3] += 1
            row[2] += box_outside(values, frame, width, height)

    def result(self) -> dict:
        """``{"n", "unparsed", "outside", "unparsed_share", "outside_share", "per_family": {...}}``; the
        outside share is over the answers whose frame and image size are known (None when none is)."""
        per_family = {fam: _shares(*row) for fam, row in sorted(self.counts.items())}
        total = [sum(row[i] for row in self.counts.values()) for i in range(4)]
        return {**_shares(*total), "per_family": per_family}

    def warnings(self, who: str) -> list[str]:
        """One line per family whose unparsed or outside share is above :data:`WARN_SHARE`."""
        lines = []
        for family, m in self.result()["per_family"].items():
            bad = [f"{m['unparsed']} of {m['n']} have no box ({m['unparsed_share']:.0%})"
                   if m["unparsed_share"] > WARN_SHARE else "",
                   f"{m['outside']} of {m['checked']} fall outside the image ({m['outside_share']:.0%})"
                   if m["outside_share"] is not None and m["outside_share"] > WARN_SHARE else ""]
            bad = [b for b in bad if b]
            if bad:
                lines.append(f"{who}: warning: {family} grounding answers: {', '.join(bad)}; is the model asked "
                             "in the frame it was trained in (docs/families.md)?")
        return lines

    def summary(self) -> str:
        """``grounding: 2 of 10 no box (20%), 1 of 8 outside (12%)`` (empty without grounding answers)."""
        m = self.result()
        if not m["n"]:
            return ""
        text = f"grounding: {m['unparsed']} of {m['n']} no box ({m['unparsed_share']:.0%})"
        if m["outside_share"] is not None:
            text += f", {m['outside']} of {m['checked']} outside the image ({m['outside_share']:.0%})"
        return text


def _shares(n: int, unparsed: int, outside: int, checked: int) -> dict:
    return {"n": n, "unparsed": unparsed, "outside": outside, "checked": checked,
            "unparsed_share": unparsed / n if n else 0.0, "outside_share": outside / checked if checked else None}


def check_grounding(answers: Iterable[tuple[str, BoxFrame | None, float | None, float | None]]) -> dict:
    """The shares of :class:`FrameCheck` for ``(answer, frame, width, height)`` grounding answers."""
    check = FrameCheck()
    for answer, frame, width, height in answers:
        check.add(answer, frame, width, height)
    return check.result()


def frame_fields(frame: BoxFrame, width: int, height: int) -> dict:
    """What predict.py records on a grounding prediction line: the frame asked in and the image size."""
    return {FRAME_FIELD: frame.to_dict(), SIZE_FIELD: [int(width), int(height)]}


def read_frame_fields(rec: dict, where: str) -> tuple[BoxFrame | None, int | None, int | None]:
    """The frame and image size a prediction line records (None, None, None for a line without them).

    Raises ValueError naming ``where`` and the field for malformed values."""
    if FRAME_FIELD not in rec and SIZE_FIELD not in rec:
        return None, None, None
    size = rec.get(SIZE_FIELD)
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"{where}: {SIZE_FIELD}: expected [width, height], two positive integers, got {size!r}")
    frame = BoxFrame.from_dict(rec.get(FRAME_FIELD), where=f"{where}: {FRAME_FIELD}")
    return frame, size[0], size[1]
