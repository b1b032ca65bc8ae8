"""A tiny hand-made LLaVA dataset: four single-turn records on four small, distinct images.

Used by the tests of training and inference (the memorisation round trip: train LoRA on
these records, then ask each question with ``fmt.prompt(question, first=True)`` and expect
the trained answer back), by the training benchmark and by the GPU check script.

    python vlm_training/toy_data.py OUT_DIR      # writes OUT_DIR/toy_llava.json + OUT_DIR/images/
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from vlm_annotation import prompts
from vlm_annotation.boxes import box_to_text
from vlm_annotation.io_utils import write_json_atomic
from vlm_annotation.runtime import report_input_errors, require_output_dir
from vlm_training.llava_format import IMAGE_PLACEHOLDER


def shape_box(w: int, h: int) -> list[int]:
    """Pixel box of the rectangle drawn on every toy image (its middle half)."""
    return [w // 4, h // 4, 3 * w // 4, 3 * h // 4]


# (image file relative to the images dir, size, background, shape colour, question, answer, qa type)
# Sizes are not square on purpose, so the pad-to-square path is exercised; boxes in the text
# are the drawn rectangle's, in the shared box format; questions and answers only use words
# the tiny tokenizer was trained on.
_TOY = [
    ("scenes/red.png", (48, 32), (200, 30, 30), (250, 250, 250),
     prompts.COUNT_CLASS.format(plural=prompts.plural("can")), prompts.count_answer(2, "can"), "count"),
    ("scenes/green.png", (32, 48), (30, 160, 40), (20, 20, 200),
     prompts.REGION_DESCRIPTION.format(box=box_to_text(shape_box(32, 48), 32, 48)), "a blue bottle on the grass",
     "region_description"),
    ("scenes/blue.jpg", (40, 40), (30, 60, 210), (240, 220, 40),
     prompts.EXISTS.format(label="glass"), "Yes, there is a glass.", "exists"),
    ("scenes/sub/white.png", (64, 24), (235, 235, 235), (10, 10, 10),
     prompts.GROUNDING.format(text="the black paper"), box_to_text(shape_box(64, 24), 64, 24), "grounding"),
]


def toy_records() -> list[dict]:
    """The four LLaVA records (contract format), without touching the disk."""
    records = []
    for rel, (w, h), _bg, _fg, question, answer, qa_type in _TOY:
        records.append({
            "id": f"{rel}#0",
            "image": rel,
            "width": w,
            "height": h,
            "conversations": [{"from": "human", "value": IMAGE_PLACEHOLDER + question},
                              {"from": "gpt", "value": answer}],
            "qa_types": [qa_type],
        })
    return records


def write_toy_images(image_dir: str | os.PathLike) -> Path:
    """Draw the four images (a coloured background with a contrasting shape) under ``image_dir``."""
    image_dir = Path(image_dir)
    for rel, (w, h), bg, fg, *_ in _TOY:
        path = image_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (w, h), bg)
        ImageDraw.Draw(img).rectangle(shape_box(w, h), fill=fg)
        img.save(path)
    return image_dir


def write_toy_llava_dataset(directory: str | os.PathLike,
                            name: str = "toy_llava.json") -> tuple[Path, Path, list[dict]]:
    """Write ``directory/images/...`` and ``directory/<name>``; return (json_path, image_dir, records)."""
    directory = Path(directory)
    image_dir = write_toy_images(directory / "images")
    records = toy_records()
    json_path = directory / name
    write_json_atomic(json_path, records)
    return json_path, image_dir, copy.deepcopy(records)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write toy_llava.json and images/ into")
    args = p.parse_args(argv)
    args.out_dir = require_output_dir(args.out_dir, "OUT_DIR")
    return args


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    json_path, image_dir, records = write_toy_llava_dataset(args.out_dir)
    print(f"wrote {len(records)} records to {json_path} (images in {image_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
