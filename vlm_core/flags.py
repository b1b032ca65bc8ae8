"""One name per idea: the flags that mean the same thing in several stages, with every spelling each accepts.

The user guide's name is canonical (first, and the attribute name); the others stay as aliases, the same
set in every stage, so ``--image_dir`` works where ``--images_dir`` is documented and the other way round::

    p.add_argument(*flag_names("--images_dir", IMAGES_DIR), required=True, help="folder of images")
"""
from __future__ import annotations

IMAGES_DIR = ("--images_dir", "--image_dir")                            # a folder of images
ANNOTATION_FILE = ("--annotation_file", "--annotations", "--input_file")  # an annotation file (stage 1's output)


def flag_names(canonical: str, group: tuple[str, ...]) -> tuple[str, ...]:
    """``canonical`` first (argparse names the attribute after it), then the rest of its group."""
    if canonical not in group:
        raise ValueError(f"{canonical} is not one of {group}")
    return (canonical, *(name for name in group if name != canonical))
