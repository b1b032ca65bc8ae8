"""Annotation records -> LLaVA conversation records: where every box is rendered, once.

A Q&A pair of the annotation file names boxes by placeholder (``<box:3>``: the object with id 3,
:mod:`vlm_core.schema`). Here each placeholder becomes the box as the target model family writes
it, through that family's frame (:class:`vlm_core.families.BoxFrame`; LLaVA-1.5's is the padded
square, 0..1, 2 decimals), from the object's pixel box. Region questions are rebuilt from their
template, and a grounding answer is the box as the family answers (Qwen2.5/3-VL: JSON with the
label). ``convert_to_llava_format.py`` is the command line; the benchmarks import this module.
"""
from __future__ import annotations

import random
from collections import Counter

from vlm_core import families, prompts
from vlm_core.llava_format import IMAGE_PLACEHOLDER, IMAGE_TOKEN
from vlm_core.schema import REGION_QUESTION_TYPES, AnnotationError, render_placeholders

_REGION_DESCRIPTION_PREFIX = prompts.REGION_DESCRIPTION.split("{box}")[0]
_REGION_DESCRIPTION_LABELED_PREFIX = prompts.REGION_DESCRIPTION_LABELED.split("{label}")[0]
_DEFAULT_FRAME = families.frame_for_family("llava")


def _region_question(qa: dict, obj: dict, box: str) -> str:
    """A region question in the shared wording, keeping the labeled variant if it was used."""
    if qa["type"] == "region_label":
        return prompts.REGION_LABEL.format(box=box)
    question = qa["question"]
    if not question.startswith(_REGION_DESCRIPTION_PREFIX) and question.startswith(_REGION_DESCRIPTION_LABELED_PREFIX):
        return prompts.REGION_DESCRIPTION_LABELED.format(label=obj["label"], box=box)
    return prompts.REGION_DESCRIPTION.format(box=box)


class ImageBoxes:
    """The objects of one image by id, and each one's box text in ``frame``, rendered once per image."""

    def __init__(self, rec: dict, frame: families.BoxFrame = _DEFAULT_FRAME):
        self.rec, self.frame = rec, frame
        self.objects = {o["id"]: o for o in rec["objects"]}
        self._text: dict[int, str] = {}

    def box_text(self, oid: int) -> str:
        """The box of object ``oid`` as the family writes it in a question."""
        text = self._text.get(oid)
        if text is None:
            text = self._text[oid] = self.frame.render_box(self.objects[oid]["bbox"], self.rec["width"],
                                                           self.rec["height"])
        return text

    def answer_box(self, oid: int) -> str:
        """A grounding answer: the box as the family answers it (Qwen2.5/3-VL: JSON with the label)."""
        obj = self.objects[oid]
        return self.frame.render_answer(obj["bbox"], self.rec["width"], self.rec["height"], label=obj["label"])


def render_pair(rec: dict, qa: dict, file, path: str, boxes: ImageBoxes | None = None) -> tuple[str, str]:
    """The (question, answer) text of one (validated) Q&A pair, every placeholder rendered in the frame.

    The annotation's wording (already from ``prompts``) is kept; region questions are rebuilt from
    their template around the box of their object (``object_ids[0]``); a grounding answer is that
    object's box.
    """
    boxes = boxes or ImageBoxes(rec)
    ids = qa.get("object_ids") or ()
    question, answer, qtype = qa["question"], qa["answer"], qa["type"]
    if IMAGE_TOKEN in question or IMAGE_TOKEN in answer:
        field = "question" if IMAGE_TOKEN in question else "answer"
        raise AnnotationError(file, f"{path}.{field}", f"contains the image token {IMAGE_TOKEN!r}")

    if qtype in REGION_QUESTION_TYPES:
        if not ids:
            raise AnnotationError(file, f"{path}.object_ids", f"a {qtype} pair must name the object it asks about")
        question = _region_question(qa, boxes.objects[ids[0]], boxes.box_text(ids[0]))
    else:
        question = render_placeholders(question, boxes.box_text)

    if qtype == "grounding":
        if not ids:
            raise AnnotationError(file, f"{path}.object_ids", "a grounding pair must name the object it locates")
        answer = boxes.answer_box(ids[0])
    else:
        answer = render_placeholders(answer, boxes.box_text)
    return question, answer


def image_records(rec: dict, index: int, file, max_turns: int, qa_types=None, left_out: Counter | None = None,
                  frame: families.BoxFrame | None = None, shuffle_seed: int | None = None) -> list[dict]:
    """The LLaVA records of one (validated) image record: its Q&A pairs as turns, ``max_turns`` per record.

    ``qa_types``: keep only pairs of these types (the others are counted in ``left_out``).
    ``frame``: the box frame to render for (default LLaVA-1.5's), recorded in each record as
    :func:`vlm_core.families.frame_entry` says.
    ``shuffle_seed``: put the pairs in an order seeded by it and the image path (``--shuffle_turns``).
    """
    frame = frame or _DEFAULT_FRAME
    boxes = ImageBoxes(rec, frame)
    pairs = []
    for k, qa in enumerate(rec.get("qa", [])):
        if qa_types is not None and qa["type"] not in qa_types:
            if left_out is not None:
                left_out[qa["type"]] += 1
            continue
        pairs.append((render_pair(rec, qa, file, f"images[{index}].qa[{k}]", boxes), qa["type"]))
    image = rec["image"].replace("\\", "/")
    if shuffle_seed is not None:  # a per-image order, the same on every run and machine
        random.Random(f"{shuffle_seed}:{image}").shuffle(pairs)
    size = max_turns if max_turns > 0 else max(1, len(pairs))
    frame_entry = families.frame_entry(frame)
    out = []
    for k, start in enumerate(range(0, len(pairs), size)):
        chunk = pairs[start:start + size]
        conversations = []
        for t, ((question, answer), _) in enumerate(chunk):
            human = IMAGE_PLACEHOLDER + question if t == 0 else question
            conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
        out.append({"id": f"{image}#{k}", "image": image, "width": rec["width"], "height": rec["height"],
                    "conversations": conversations, "qa_types": [qtype for _, qtype in chunk], **frame_entry})
    return out
