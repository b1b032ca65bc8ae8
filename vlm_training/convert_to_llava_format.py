"""Stage 3: convert an annotation file to the LLaVA conversation format.

    python vlm_training/convert_to_llava_format.py --annotation_file train.json --output_file train_llava.json

Output: a JSON list of records, one per image (more with ``--max_turns``)::

    {"id": "scenes/a.jpg#0", "image": "scenes/a.jpg", "width": 640, "height": 480,
     "conversations": [{"from": "human", "value": "<image>\\nHow many objects are there?"},
                       {"from": "gpt", "value": "There are 3 objects in this image."}, ...],
     "qa_types": ["count", ...]}

``<image>`` appears once, at the start of the first human turn. Boxes in the text are
re-rendered from the referenced objects' pixel boxes with ``boxes.box_to_text`` (the image
padded to a square, 0..1, 2 decimals), so every file uses the one box format training and
inference use. The original LLaVA training code and LLaMA-Factory's ShareGPT loader read
this file as is; ``width``, ``height`` and ``qa_types`` are extra keys they ignore.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from vlm_annotation import prompts
from vlm_annotation.boxes import BOX_PATTERN, box_to_text
from vlm_annotation.io_utils import InputError, write_json_atomic
from vlm_annotation.runtime import report_input_errors, require_output_file
from vlm_annotation.schema import AnnotationError, load_annotations
from vlm_training.llava_format import IMAGE_PLACEHOLDER, IMAGE_TOKEN

# Types whose question names a region by its box (one referenced object).
_REGION_QUESTION_TYPES = ("region_description", "region_label")
_REGION_DESCRIPTION_PREFIX = prompts.REGION_DESCRIPTION.split("{box}")[0]
_REGION_DESCRIPTION_LABELED_PREFIX = prompts.REGION_DESCRIPTION_LABELED.split("{label}")[0]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotation_file", required=True, help="annotation file to convert (e.g. train.json)")
    p.add_argument("--output_file", required=True, help="where to write the LLaVA records (e.g. train_llava.json)")
    p.add_argument("--max_turns", type=int, default=0,
                   help="most Q&A pairs in one record; extra pairs of an image go to further records "
                        "of the same image (ids <image>#1, #2, ...). 0 = no cap")
    args = p.parse_args(argv)
    if args.max_turns < 0:
        raise InputError(f"--max_turns must be >= 0, got {args.max_turns}")
    return args


def _replace_boxes(text: str, box_texts: list[str]) -> str:
    """Replace the boxes written in ``text``, in order, with ``box_texts``."""
    it = iter(box_texts)
    return BOX_PATTERN.sub(lambda _m: next(it), text)


def _region_question(qa: dict, obj: dict, box: str) -> str:
    """A region question in the shared wording, keeping the labeled variant if it was used."""
    if qa["type"] == "region_label":
        return prompts.REGION_LABEL.format(box=box)
    question = qa["question"]
    if not question.startswith(_REGION_DESCRIPTION_PREFIX) and question.startswith(_REGION_DESCRIPTION_LABELED_PREFIX):
        return prompts.REGION_DESCRIPTION_LABELED.format(label=obj["label"], box=box)
    return prompts.REGION_DESCRIPTION.format(box=box)


def render_pair(rec: dict, qa: dict, file, path: str) -> tuple[str, str]:
    """The (question, answer) text of one Q&A pair with every box in the shared format.

    The annotation's wording (already from ``prompts``) is kept; boxes are re-rendered from
    the pixel boxes of the objects the pair refers to, in the order of ``object_ids``.
    Region questions are rebuilt from their template; a grounding answer is the box.
    """
    objects = {o["id"]: o for o in rec["objects"]}
    width, height = rec["width"], rec["height"]
    refs = [objects[i] for i in qa.get("object_ids", [])]
    box_texts = [box_to_text(o["bbox"], width, height) for o in refs]
    question, answer, qtype = qa["question"], qa["answer"], qa["type"]
    for field, text in (("question", question), ("answer", answer)):
        if IMAGE_TOKEN in text:
            raise AnnotationError(file, f"{path}.{field}", f"contains the image token {IMAGE_TOKEN!r}")

    def rerender_boxes(text: str, field: str) -> str:
        """Boxes in free text are the referenced objects' boxes, in object_ids order."""
        n_boxes = len(BOX_PATTERN.findall(text))
        if not n_boxes:
            return text
        if n_boxes != len(refs):
            raise AnnotationError(file, field, f"has {n_boxes} box(es) but object_ids names {len(refs)} object(s)")
        return _replace_boxes(text, box_texts)

    if qtype in _REGION_QUESTION_TYPES:
        if not refs:
            raise AnnotationError(file, f"{path}.object_ids", f"a {qtype} pair must name the object it asks about")
        question = _region_question(qa, refs[0], box_texts[0])
    else:
        question = rerender_boxes(question, f"{path}.question")

    if qtype == "grounding":
        if not refs:
            raise AnnotationError(file, f"{path}.object_ids", "a grounding pair must name the object it locates")
        # The answer is the box itself, whatever precision the annotation wrote it with.
        answer = box_texts[0]
    else:
        answer = rerender_boxes(answer, f"{path}.answer")
    return question, answer


def image_records(rec: dict, index: int, file, max_turns: int) -> list[dict]:
    """The LLaVA records of one image: its Q&A pairs as turns, ``max_turns`` per record."""
    pairs = [(render_pair(rec, qa, file, f"images[{index}].qa[{k}]"), qa["type"])
             for k, qa in enumerate(rec.get("qa", []))]
    size = max_turns if max_turns > 0 else max(1, len(pairs))
    image = rec["image"].replace("\\", "/")
    out = []
    for k, start in enumerate(range(0, len(pairs), size)):
        chunk = pairs[start:start + size]
        conversations = []
        for t, ((question, answer), _) in enumerate(chunk):
            human = IMAGE_PLACEHOLDER + question if t == 0 else question
            conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
        out.append({"id": f"{image}#{k}", "image": image, "width": rec["width"], "height": rec["height"],
                    "conversations": conversations, "qa_types": [qtype for _, qtype in chunk]})
    return out


def convert(data: dict, file=None, max_turns: int = 0) -> tuple[list[dict], dict]:
    """All LLaVA records of an annotation file, and counts for the summary."""
    records, empty = [], 0
    for i, rec in enumerate(data["images"]):
        recs = image_records(rec, i, file, max_turns)
        if not recs:
            empty += 1
        records += recs
    types = Counter(t for r in records for t in r["qa_types"])
    stats = {"images": len(data["images"]) - empty, "records": len(records),
             "turns": sum(types.values()), "skipped_empty": empty, "types": dict(sorted(types.items()))}
    return records, stats


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    out = require_output_file(args.output_file, "--output_file")
    if out.resolve() == Path(args.annotation_file).resolve():
        raise InputError(f"--output_file: {out} is the same file as --annotation_file")
    data = load_annotations(args.annotation_file)
    records, stats = convert(data, args.annotation_file, args.max_turns)
    write_json_atomic(out, records)
    if stats["skipped_empty"]:
        print(f"skipped {stats['skipped_empty']} image(s) without Q&A pairs (no record to write)")
    per_type = ", ".join(f"{t} {n}" for t, n in stats["types"].items()) or "none"
    print(f"turns by type: {per_type}")
    print(f"wrote {stats['records']} records ({stats['images']} images, {stats['turns']} Q&A turns) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
