"""Question-answer pairs about one image, from its fused, described objects.

Every question is a template of :mod:`vlm_core.prompts`, and a box in a question or
answer is the placeholder of its object (``<box:3>``, :func:`vlm_core.schema.box_placeholder`),
which conversion renders in the box frame of the model family the data is for; ``object_ids``
lists the objects a pair names. Types are those of :data:`vlm_core.schema.QA_TYPES`, in that order.
Random choices (negative classes, which half of the objects gets the labelled region
prompt, which pairs get relation questions) come from the ``rng`` passed in: seed it per
image (see :func:`image_rng`), and an image gets the same pairs in any batch, shard or run.
"""
from __future__ import annotations

import random
from typing import Sequence

from vlm_annotation.describer import description_surface
from vlm_annotation.spatial import position_phrase, position_word, relation_phrase
from vlm_core import prompts
from vlm_core.schema import box_placeholder

# Prepositions after which "What is the glass lying on?" is the right question.
_ON = ("on", "on top of")


def image_rng(seed: int, image: str) -> random.Random:
    """A generator that depends only on the run's seed and the image's relative path."""
    return random.Random(f"{seed}:{image}")


def _qa(question: str, answer: str, qtype: str, object_ids: Sequence[int] = ()) -> dict:
    return {"question": question, "answer": answer, "type": qtype, "object_ids": list(object_ids)}


def _exists_answer(label: str, present: bool) -> str:
    art = prompts.article(label)
    return f"Yes, there is {art} {label} in this image." if present else f"No, there is no {label} in this image."


def generate_qa(objects: Sequence[dict], width: int, height: int, vocabulary: Sequence[str],
                rng: random.Random, where: dict | None = None, max_region_objects: int = 10,
                max_relations: int = 3, max_negatives: int = 2) -> list[dict]:
    """Q&A pairs for one image.

    ``objects``: dicts with ``id``, ``label``, ``bbox`` (pixels), ``description``, best first.
    ``vocabulary``: every class the detectors can report (negatives come from the absent ones).
    ``where``: optional ``id -> "on the grass, in the bottom left of the image"`` for location
    answers (defaults to the grid position). Per-object questions go to the first
    ``max_region_objects`` objects.
    """
    where = where or {}
    qa: list[dict] = []
    ids_by_label: dict[str, list[int]] = {}
    for obj in objects:
        ids_by_label.setdefault(obj["label"], []).append(obj["id"])
    present = sorted(ids_by_label)
    absent = sorted(set(vocabulary) - set(present))
    negatives = rng.sample(absent, min(len(absent), max_negatives, max(1, len(present))))

    qa.append(_qa(prompts.COUNT, prompts.count_answer(len(objects)), "count", [o["id"] for o in objects]))
    for label in present + negatives:
        ids = ids_by_label.get(label, [])
        qa.append(_qa(prompts.COUNT_CLASS.format(plural=prompts.plural(label)),
                      prompts.count_answer(len(ids), label), "count_class", ids))
    for label in present + negatives:
        ids = ids_by_label.get(label, [])
        qa.append(_qa(prompts.EXISTS.format(label=label), _exists_answer(label, bool(ids)), "exists", ids))

    focus = list(objects[:max(0, max_region_objects)])
    boxes = {o["id"]: box_placeholder(o["id"]) for o in objects}
    for obj in focus:
        label, oid = obj["label"], obj["id"]
        place = where.get(oid) or position_phrase(obj["bbox"], width, height)
        if len(ids_by_label[label]) == 1:
            question = prompts.LOCATION.format(label=label)
        else:  # several of this class: name the box so the question has one answer
            question = prompts.LOCATION_BOXED.format(label=label, box=boxes[oid])
        qa.append(_qa(question, f"The {label} is {place}.", "location", [oid]))

    # Half of the descriptions are asked with the label given, as describe_object(label=...) asks; an odd one
    # out goes either way (with one object per image asked about, none was ever labelled).
    n_labelled = len(focus) // 2 + (len(focus) % 2 == 1 and rng.random() < 0.5)
    labelled = set(rng.sample([o["id"] for o in focus], n_labelled))
    for obj in focus:
        if not obj.get("description"):
            continue
        oid = obj["id"]
        if oid in labelled:
            question = prompts.REGION_DESCRIPTION_LABELED.format(label=obj["label"], box=boxes[oid])
        else:
            question = prompts.REGION_DESCRIPTION.format(box=boxes[oid])
        qa.append(_qa(question, obj["description"], "region_description", [oid]))
    for obj in focus:
        qa.append(_qa(prompts.REGION_LABEL.format(box=boxes[obj["id"]]), obj["label"], "region_label", [obj["id"]]))

    # Grounding needs a phrase that picks out one object: class + grid cell, when unique.
    cells: dict[tuple[str, str], int] = {}
    for obj in objects:
        key = (obj["label"], position_word(obj["bbox"], width, height))
        cells[key] = cells.get(key, 0) + 1
    for obj in focus:
        if cells[(obj["label"], position_word(obj["bbox"], width, height))] != 1:
            continue
        text = f"the {obj['label']} {position_phrase(obj['bbox'], width, height)}"
        qa.append(_qa(prompts.GROUNDING.format(text=text), boxes[obj["id"]], "grounding", [obj["id"]]))

    pairs = [(a, b) for i, a in enumerate(focus) for b in focus[i + 1:]]
    for a, b in sorted(rng.sample(pairs, min(len(pairs), max_relations)), key=lambda p: (p[0]["id"], p[1]["id"])):
        if rng.random() < 0.5:
            a, b = b, a
        phrase = relation_phrase(a["bbox"], b["bbox"], width, height)
        question = prompts.RELATION.format(label_a=a["label"], box_a=boxes[a["id"]],
                                           label_b=b["label"], box_b=boxes[b["id"]])
        qa.append(_qa(question, f"The {a['label']} is {phrase} the {b['label']}.", "relation", [a["id"], b["id"]]))

    # "What is the glass lying on?" -> "grass", when the object's description names what it lies on.
    for obj in focus:
        prep, surface = description_surface(obj.get("description", ""), obj["label"])
        if prep not in _ON:
            continue
        if len(ids_by_label[obj["label"]]) == 1:
            question = prompts.SURFACE.format(label=obj["label"])
        else:
            question = prompts.SURFACE_BOXED.format(label=obj["label"], box=boxes[obj["id"]])
        qa.append(_qa(question, surface, "surface", [obj["id"]]))
    return qa
