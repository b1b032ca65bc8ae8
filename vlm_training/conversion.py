"""Annotation records -> LLaVA conversation records: where every box is rendered, once.

A Q&A pair of the annotation file names boxes by placeholder (``<box:3>``: the object with id 3,
:mod:`vlm_core.schema`). Here each placeholder becomes the box as the target model family writes
it, through that family's frame (:class:`vlm_core.families.BoxFrame`; LLaVA-1.5's is the padded
square, 0..1, 2 decimals), from the object's pixel box. Region questions are rebuilt from their
template, and a grounding answer is the box as the family answers (Qwen2.5/3-VL: JSON with the
label). ``convert_to_llava_format.py`` is the command line; the benchmarks import this module.

With visual box prompts (``box_prompt`` ``visual`` or ``both``, issue 24) a question names each of its
boxes by the colour it is drawn in ("the object in the red box"; ``both`` keeps the coordinates after it),
the first box red, the second green (:data:`vlm_core.images.BOX_PROMPT_SLOTS`), and the record says what to
draw (its ``box_prompt`` field, :mod:`vlm_core.llava_format`). A record holds one image, drawn once, so the
pairs of an image are grouped by the boxes their questions name: the pairs about one object share a record
with its box drawn, a relation its own with two, and the image-level pairs (count, exists, grounding, whose
answer is the box, ...) a record where nothing is drawn.
"""
from __future__ import annotations

import random
from collections import Counter

from vlm_core import families, prompts
from vlm_core.images import BOX_PROMPT_SLOTS
from vlm_core.llava_format import BOX_PROMPT_KEY, IMAGE_PLACEHOLDER, IMAGE_TOKEN
from vlm_core.schema import (
    REGION_QUESTION_TYPES,
    AnnotationError,
    box_placeholder,
    placeholder_ids,
    render_placeholders,
)

_REGION_DESCRIPTION_PREFIX = prompts.REGION_DESCRIPTION.split("{box}")[0]
_REGION_DESCRIPTION_LABELED_PREFIX = prompts.REGION_DESCRIPTION_LABELED.split("{label}")[0]
_DEFAULT_FRAME = families.frame_for_family("llava")


def _region_question(qa: dict, obj: dict, box: str, visual: bool = False) -> str:
    """A region question in the shared wording, keeping the labeled variant if it was used; ``visual``:
    the wording that names the box by its colour (``box`` is then "the red box", :func:`prompts.box_reference`)."""
    if qa["type"] == "region_label":
        return (prompts.REGION_LABEL_VISUAL if visual else prompts.REGION_LABEL).format(box=box)
    question = qa["question"]
    if not question.startswith(_REGION_DESCRIPTION_PREFIX) and question.startswith(_REGION_DESCRIPTION_LABELED_PREFIX):
        template = prompts.REGION_DESCRIPTION_LABELED_VISUAL if visual else prompts.REGION_DESCRIPTION_LABELED
        return template.format(label=obj["label"], box=box)
    return (prompts.REGION_DESCRIPTION_VISUAL if visual else prompts.REGION_DESCRIPTION).format(box=box)


# The toolkit's own wordings with boxes and their visual forms ("at <box:3>" reads "in the red box"), with how
# many boxes they name; a question in any other wording gets each placeholder replaced by the reference.
_VISUAL_WORDINGS = {"location": (prompts.LOCATION_BOXED, prompts.LOCATION_VISUAL, 1),
                    "surface": (prompts.SURFACE_BOXED, prompts.SURFACE_VISUAL, 1),
                    "relation": (prompts.RELATION, prompts.RELATION_VISUAL, 2)}


def _wording_fields(ids: list[int], objects: dict, box_of) -> dict:
    """The fields of a one- or two-box template for the objects ``ids``, each box given by ``box_of(id)``."""
    a, b = ids[0], ids[-1]
    return {"label": objects[a]["label"], "box": box_of(a), "label_a": objects[a]["label"], "box_a": box_of(a),
            "label_b": objects[b]["label"], "box_b": box_of(b)}


def drawn_objects(qa: dict) -> list[int]:
    """The objects whose boxes a visual prompt draws for a (validated) pair, in the order its question names
    them: a region question's object, the placeholders of any other question; none for an image-level
    question, nor for grounding (its answer is the box, which must not be shown)."""
    if qa["type"] in REGION_QUESTION_TYPES:
        return list(qa["object_ids"][:1])
    return list(dict.fromkeys(placeholder_ids(qa["question"])))


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


class MarkedBoxes(ImageBoxes):
    """Every box left as its placeholder (``<box:ID>``), question and answer alike: for exporters that put the
    boxes elsewhere (ms-swift's ``objects``, :mod:`vlm_training.trainer_export`)."""

    def box_text(self, oid: int) -> str:
        return box_placeholder(oid)

    def answer_box(self, oid: int) -> str:
        return box_placeholder(oid)


def _visual_question(qa: dict, boxes: ImageBoxes, drawn: list[int], box_prompt: str) -> str:
    """The question of a pair whose ``drawn`` objects are drawn in the colours of their slots."""
    refs = {oid: prompts.box_reference(box_prompt, BOX_PROMPT_SLOTS[slot], boxes.box_text(oid))
            for slot, oid in enumerate(drawn)}
    if qa["type"] in REGION_QUESTION_TYPES:
        return _region_question(qa, boxes.objects[drawn[0]], refs[drawn[0]], visual=True)
    wording = _VISUAL_WORDINGS.get(qa["type"])
    if wording is not None and len(drawn) == wording[2] and \
            qa["question"] == wording[0].format(**_wording_fields(drawn, boxes.objects, box_placeholder)):
        return wording[1].format(**_wording_fields(drawn, boxes.objects, refs.__getitem__))
    return render_placeholders(qa["question"], refs.__getitem__)


def render_pair(rec: dict, qa: dict, file, path: str, boxes: ImageBoxes | None = None,
                box_prompt: str = "text") -> tuple[str, str]:
    """The (question, answer) text of one (validated) Q&A pair, every placeholder rendered in the frame.

    The annotation's wording (already from ``prompts``) is kept; region questions are rebuilt from
    their template around the box of their object (``object_ids[0]``); a grounding answer is that
    object's box. ``box_prompt`` ``visual``/``both``: the question names the boxes of
    :func:`drawn_objects` by their colours (answers keep their boxes in text: the model writes boxes so).
    """
    boxes = boxes or ImageBoxes(rec)
    ids = qa.get("object_ids") or ()
    question, answer, qtype = qa["question"], qa["answer"], qa["type"]
    if IMAGE_TOKEN in question or IMAGE_TOKEN in answer:
        field = "question" if IMAGE_TOKEN in question else "answer"
        raise AnnotationError(file, f"{path}.{field}", f"contains the image token {IMAGE_TOKEN!r}")

    if qtype in REGION_QUESTION_TYPES and not ids:
        raise AnnotationError(file, f"{path}.object_ids", f"a {qtype} pair must name the object it asks about")
    if box_prompt != "text":
        drawn = drawn_objects(qa)
        if len(drawn) > len(BOX_PROMPT_SLOTS):
            raise AnnotationError(file, f"{path}.question", f"names {len(drawn)} boxes; --box_prompt {box_prompt} "
                                                            f"draws at most {len(BOX_PROMPT_SLOTS)}, one per colour")
        question = _visual_question(qa, boxes, drawn, box_prompt)
    elif qtype in REGION_QUESTION_TYPES:
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
                  frame: families.BoxFrame | None = None, shuffle_seed: int | None = None,
                  box_prompt: str = "text", mark_boxes: bool = False) -> list[dict]:
    """The LLaVA records of one (validated) image record: its Q&A pairs as turns, ``max_turns`` per record.

    ``qa_types``: keep only pairs of these types (the others are counted in ``left_out``).
    ``frame``: the box frame to render for (default LLaVA-1.5's), recorded in each record as
    :func:`vlm_core.families.frame_entry` says.
    ``shuffle_seed``: put the pairs in an order seeded by it and the image path (``--shuffle_turns``).
    ``box_prompt``: ``visual``/``both`` groups the pairs by the boxes drawn for them (module docstring),
    each group in records of its own that carry those boxes.
    ``mark_boxes``: leave every box as its placeholder (:class:`MarkedBoxes`); the records are otherwise the same.
    """
    frame = frame or _DEFAULT_FRAME
    boxes = (MarkedBoxes if mark_boxes else ImageBoxes)(rec, frame)
    pairs = []
    for k, qa in enumerate(rec.get("qa", [])):
        if qa_types is not None and qa["type"] not in qa_types:
            if left_out is not None:
                left_out[qa["type"]] += 1
            continue
        pairs.append((render_pair(rec, qa, file, f"images[{index}].qa[{k}]", boxes, box_prompt), qa["type"],
                      tuple(drawn_objects(qa)) if box_prompt != "text" else None))
    image = rec["image"].replace("\\", "/")
    if shuffle_seed is not None:  # a per-image order, the same on every run and machine
        random.Random(f"{shuffle_seed}:{image}").shuffle(pairs)
    groups: dict = {}   # the pairs by the objects drawn for them, in the order each group first comes
    for pair in pairs:
        groups.setdefault(pair[2], []).append(pair)
    frame_entry = families.frame_entry(frame)
    out = []
    for drawn, group in groups.items():
        size = max_turns if max_turns > 0 else max(1, len(group))
        entry = {} if drawn is None else {BOX_PROMPT_KEY: {"mode": box_prompt, "boxes": [
            {"bbox": boxes.objects[oid]["bbox"], "colour": BOX_PROMPT_SLOTS[slot]} for slot, oid in enumerate(drawn)]}}
        for start in range(0, len(group), size):
            chunk = group[start:start + size]
            conversations = []
            for t, ((question, answer), _, _) in enumerate(chunk):
                human = IMAGE_PLACEHOLDER + question if t == 0 else question
                conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
            out.append({"id": f"{image}#{len(out)}", "image": image, "width": rec["width"], "height": rec["height"],
                        "conversations": conversations, "qa_types": [qtype for _, qtype, _ in chunk],
                        **frame_entry, **entry})
    return out
