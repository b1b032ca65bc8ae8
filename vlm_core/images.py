"""Open any image a user may have, the same way in every stage.

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
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
