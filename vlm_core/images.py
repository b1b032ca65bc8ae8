"""Open any image a user may have, the same way in every stage; draw visual box prompts on it.

EXIF orientation is applied (width/height are those of the displayed image), every
mode (1-bit, grayscale, 16-bit, float, palette, alpha, CMYK) becomes RGB, and
decompression bombs are refused. Anything that cannot be read raises
:class:`ImageLoadError` with the reason, so callers can skip the file and go on.

Which files a folder of images holds is decided here too (:func:`list_images`), with one
rule for symlinks that every stage shares: a symlink inside the images folder is followed
wherever it points (a linked folder is walked, a link back to a folder above it is not
followed again); what the toolkit writes are paths relative to the folder, never absolute
and never with ``..``. A file name that is not valid UTF-8 cannot be written into a JSON
file: it is listed, refused by :func:`load_image` with that reason, and reported under its
escaped :func:`printable_name`.

Visual box prompts (ViP-LLaVA: a box drawn on the image works better than its coordinates in
text) are drawn here too, by one function that training and inference both call
(:func:`draw_box_prompt`), before the family's own resize or padding.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from vlm_core.io_utils import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default limit


class ImageLoadError(Exception):
    """An image file that cannot be used; ``str(err)`` is the reason."""


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def printable_name(name: str) -> str:
    """``name`` itself when it is valid UTF-8, else its bytes with the undecodable ones escaped.

    Python hands out an undecodable file name with lone surrogates in it ("bad\\udcff.jpg"),
    which no UTF-8 file can hold; this gives "bad\\xff.jpg", printable and writable.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def list_images(images_dir: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of the image files under ``images_dir`` (walked recursively), sorted.

    Hidden files and folders (a leading ".") are left out. Symlinks are followed, to files and
    folders alike, wherever they point; a folder that links back to one above it is not walked
    again. A broken link with an image extension is listed, so that loading it reports why it
    is skipped. A folder that cannot be read is an :class:`InputError` naming it.
    """
    root = Path(images_dir)
    found: list[str] = []

    def walk(folder: Path, rel: str, above: frozenset[str]) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise InputError(f"--images_dir: cannot read folder {printable_name(str(folder))}: "
                             f"{e.strerror or e}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = f"{rel}{entry.name}"
            if entry.is_dir():  # follows symlinks
                real = os.path.realpath(entry.path)
                if real not in above:
                    walk(Path(entry.path), path + "/", above | {real})
            elif is_image_file(entry.name):
                found.append(path)

    walk(root, "", frozenset({os.path.realpath(root)}))
    return sorted(found)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without clipping high-bit-depth images."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels would otherwise keep whatever colour they store: show them on white.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an RGB PIL image in its displayed orientation.

    Raises :class:`ImageLoadError` for a missing, truncated, corrupt, non-image or
    oversized file.
    """
    path = Path(path)
    if printable_name(str(path)) != str(path):
        raise ImageLoadError(f"file name is not valid UTF-8 ({printable_name(path.name)}); rename the file")
    if not path.is_file():
        raise ImageLoadError(f"not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageLoadError(
                        f"too large ({width}x{height} = {width * height} pixels > {max_pixels}); "
                        "refused as a possible decompression bomb")
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"refused as a possible decompression bomb: {e}") from None
    except (UnidentifiedImageError, ImportError):
        # ImportError: once ultralytics is imported it patches Image.open to try an optional
        # HEIF plugin (pi_heif) on files Pillow cannot identify.
        raise ImageLoadError("not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageLoadError(f"unreadable image: {e}") from None


def as_rgb_image(image) -> Image.Image:
    """Accept a path or a PIL image (as the inference API does) and return RGB."""
    if isinstance(image, Image.Image):
        return to_rgb(ImageOps.exif_transpose(image) or image)
    return load_image(image)


# ----------------------------------------------------------------------------- visual box prompts

# The colour of each box a question names, by its place in the question (slot 0 is red, 1 green, ...):
# fixed, so that "the red box" always means the first box. Names are what the questions say.
BOX_PROMPT_COLOURS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "purple": (128, 0, 255), "orange": (255, 128, 0), "cyan": (0, 255, 255), "white": (255, 255, 255),
}
BOX_PROMPT_SLOTS = tuple(BOX_PROMPT_COLOURS)


def box_prompt_line_width(width: int, height: int) -> int:
    """Pixels of a drawn box's outline: 1% of the shorter side, at least 2, so that it survives the
    family's downscaling (LLaVA-1.5 sees 336 pixels) on any image size."""
    return max(2, round(min(width, height) / 100))


def _pixel(v: float) -> int:
    return math.floor(v + 0.5)  # halves up, unlike round()'s to-even


def draw_box_prompt(image: Image.Image, boxes: Iterable[dict]) -> Image.Image:
    """A copy of ``image`` (RGB, as loaded) with each box's outline drawn in its colour.

    ``boxes``: ``{"bbox": [x1, y1, x2, y2], "colour": "red"}`` each (pixels of ``image``; colour a name of
    :data:`BOX_PROMPT_COLOURS`), the form a LLaVA record's ``box_prompt`` holds them in. The outline covers
    the pixels from the box edge inwards, :func:`box_prompt_line_width` wide, clipped to the image; the
    inside and the rest of the image are left as they are.
    """
    out = image.copy()
    width, height = out.size
    line = box_prompt_line_width(width, height)
    draw = ImageDraw.Draw(out)
    for box in boxes:
        x1, y1, x2, y2 = box["bbox"]
        # Pixel columns round(x1) .. round(x2) - 1 lie inside the box (PIL's corners are inclusive).
        left, top = min(max(_pixel(x1), 0), width - 1), min(max(_pixel(y1), 0), height - 1)
        right, bottom = max(min(_pixel(x2), width) - 1, left), max(min(_pixel(y2), height) - 1, top)
        draw.rectangle((left, top, right, bottom), outline=BOX_PROMPT_COLOURS[box["colour"]], width=line)
    return out
