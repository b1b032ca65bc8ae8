"""The generated Q&A scored against the truth: is each answer the VLM will be taught true of the scene?

Used by evaluate_annotations.py (given ``--ground_truth``). A pair is judged from its ``type``, its
``object_ids``, the named objects' fields (``label``, ``bbox``) and the words of its answer (a number,
yes / no, a grid cell, a surface, a relation); never from box text in a question or answer (boxes are
rendered later and may be placeholders). An annotated object stands for the true object it overlaps
most at IoU >= 0.5 (the IoU of the mAP's matching), whatever the classes; one matching no true object
does not exist, so every answer about it is false.

What makes an answer true, per type:

* ``count``: its number is the number of true objects;
* ``count_class``: its number is the number of true objects of the class the question asks about;
* ``exists``: yes exactly when a true object of that class is in the scene;
* ``location``: the object exists, has the class the answer names, lies in the grid cell the answer
  names and, when the answer names a surface and the truth knows it, on that surface;
* ``surface``: the object exists and the truth's surface is the answer (scenes without a known surface:
  not scored);
* ``relation``: both objects exist with the classes the answer names, and the answer's relation is the
  one between the true boxes;
* ``region_label``: the object exists and the answer is its true class;
* ``grounding``: the object named exists with its class (its box matches a true object of that class).

``region_description`` (free text) is not scored here. :func:`labelled_twice` counts the true objects
that annotated objects of two different classes match (one object, two labels).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from vlm_annotation.spatial import RELATION_PHRASES, position_phrase, position_word, relation
from vlm_core import prompts
from vlm_core.boxes import iou

MATCH_IOU = 0.5
SCORED_TYPES = ("count", "count_class", "exists", "location", "surface", "relation", "region_label", "grounding")
_NUMBER_WORDS = {"no": 0, "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                 "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
# Grid cell -> the phrase location answers use for it, from a tiny box at the centre of each cell of a 3x3 image.
_CELLS = {position_word(b, 3, 3): position_phrase(b, 3, 3)
          for b in ([c + 0.4, r + 0.4, c + 0.6, r + 0.6] for r in range(3) for c in range(3))}


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' -]+", " ", str(text).lower()).split())


def answer_number(answer: str) -> int | None:
    """The first number of a count answer ("There are 3 cans" -> 3, "There are no cans" -> 0)."""
    for word in _norm(answer).split():
        if word.isdigit():
            return int(word)
        if word in _NUMBER_WORDS:
            return _NUMBER_WORDS[word]
    return None


def answer_yes(answer: str) -> bool | None:
    words = _norm(answer).split()
    if not words:
        return None
    return True if words[0] == "yes" else False if words[0] == "no" else None


def answer_cell(answer: str) -> str | None:
    """The grid cell a location answer names ("... in the bottom left of the image" -> "bottom left")."""
    text = _norm(answer)
    found = [cell for cell, phrase in _CELLS.items() if _norm(phrase) in text]
    return max(found, key=len) if found else None


def answer_relation(answer: str) -> str | None:
    """The relation a relation answer names ("The can is to the left of the bag." -> "left of")."""
    text = f" {_norm(answer)} "
    found = [key for key, phrase in RELATION_PHRASES.items() if f" {_norm(phrase)} " in text]
    return max(found, key=lambda k: len(RELATION_PHRASES[k])) if found else None


def _names_label(text: str, label: str) -> bool:
    return f" {_norm(label)} " in f" {_norm(text)} "


def answer_surface(answer: str, label: str) -> str | None:
    """The surface a location answer names: "The can is on the grass, in ..." -> "grass"."""
    text = str(answer).lower()
    m = re.search(r"\bon (?:top of )?(?:the |a |an )?([a-z][a-z' -]*?)\s*(?:,|\.|$)", text)
    if not m:
        return None
    surface = m.group(1).strip()
    # "on the left of the image" is a grid cell, not a surface.
    return None if surface.endswith("of the image") or surface in ("left", "right") else surface


def _clean_surface(text: str) -> str:
    words = _norm(text).split()
    while words and words[0] in ("the", "a", "an", "on", "top", "of"):
        words = words[1:]
    return " ".join(words)


def question_label(question: str, qtype: str, vocabulary: Sequence[str]) -> str | None:
    """The class a count_class / exists question asks about: the question built from the template for a class
    of the vocabulary, else the longest class (or its plural) the question names."""
    for label in vocabulary:
        if qtype == "count_class" and question == prompts.COUNT_CLASS.format(plural=prompts.plural(label)):
            return label
        if qtype == "exists" and question == prompts.EXISTS.format(label=label):
            return label
    named = [lab for lab in vocabulary
             if _names_label(question, prompts.plural(lab)) or _names_label(question, lab)]
    return max(named, key=len) if named else None


def match_to_truth(objects: Sequence[dict], truth: Sequence[dict], iou_thr: float = MATCH_IOU) -> dict[int, int]:
    """Annotated object id -> index of the true object it overlaps most (IoU >= ``iou_thr``), any classes."""
    out = {}
    for o in objects:
        best, best_iou = None, iou_thr
        for k, t in enumerate(truth):
            value = iou(o["bbox"], t["bbox"])
            if value >= best_iou:
                best, best_iou = k, value
        if best is not None:
            out[o["id"]] = best
    return out


def labelled_twice(objects: Sequence[dict], truth: Sequence[dict], iou_thr: float = MATCH_IOU) -> int:
    """How many true objects annotated objects of two or more different classes match at IoU >= ``iou_thr``."""
    return sum(len({o["label"] for o in objects if iou(o["bbox"], t["bbox"]) >= iou_thr}) >= 2 for t in truth)


def judge(qa: dict, objects: dict[int, dict], truth: Sequence[dict], matched: dict[int, int], width: float,
          height: float, surface: str | None, vocabulary: Sequence[str]) -> bool | None:
    """Whether one Q&A pair is true of the scene; None when this scorer does not judge it."""
    qtype, answer, ids = qa["type"], qa["answer"], qa.get("object_ids", [])

    def true_object(oid):
        return truth[matched[oid]] if oid in matched else None

    if qtype == "count":
        return answer_number(answer) == len(truth)
    if qtype in ("count_class", "exists"):
        label = question_label(qa["question"], qtype, vocabulary)
        if label is None and ids:  # the objects it names say which class
            label = objects[ids[0]]["label"]
        if label is None:
            return None
        n = sum(t["label"] == label for t in truth)
        if qtype == "count_class":
            return answer_number(answer) == n
        yes = answer_yes(answer)
        return None if yes is None else yes == (n > 0)
    if qtype not in SCORED_TYPES or not ids or any(i not in objects for i in ids):
        return None
    first = true_object(ids[0])
    if qtype == "surface":
        if not surface:
            return None
        return first is not None and _clean_surface(answer) == _clean_surface(surface)
    if first is None:
        return False
    obj = objects[ids[0]]
    if qtype == "region_label":
        return _norm(answer) == _norm(first["label"])
    if qtype == "grounding":
        return first["label"] == obj["label"] and iou(obj["bbox"], first["bbox"]) >= MATCH_IOU
    if qtype == "location":
        cell = answer_cell(answer) or position_word(obj["bbox"], width, height)
        said = answer_surface(answer, obj["label"])
        ok_surface = said is None or not surface or _clean_surface(said) == _clean_surface(surface)
        return (_names_label(answer, first["label"]) and cell == position_word(first["bbox"], width, height)
                and ok_surface)
    if qtype == "relation":
        if len(ids) != 2:
            return None
        second = true_object(ids[1])
        if second is None:
            return False
        said = answer_relation(answer)
        if said is None:
            return None
        # "The can is left of the bag.": the first class named is the first object's.
        text = _norm(answer)
        a_pos, b_pos = text.find(_norm(first["label"])), text.rfind(_norm(second["label"]))
        labels_ok = a_pos >= 0 and b_pos >= 0 and (a_pos < b_pos or first["label"] == second["label"])
        return labels_ok and said == relation(first["bbox"], second["bbox"], width, height)
    return None


def score_qa(records: dict[str, dict], truth: dict[str, dict], surfaces: dict[str, str] | None = None,
             vocabulary: Sequence[str] = ()) -> dict:
    """Share of true answers overall and per type, over image records paired with their truth.

    ``records``: truth name -> annotation image record; ``truth``: truth name -> {width, height, objects};
    ``surfaces``: truth name -> the scene's surface, where known. Also counts the objects labelled twice.
    """
    surfaces = surfaces or {}
    counts: dict[str, list[int]] = {}
    twice = true_objects = 0
    for name, rec in records.items():
        entry = truth[name]
        objs = {o["id"]: o for o in rec["objects"]}
        vocab = sorted(set(vocabulary) | {o["label"] for o in rec["objects"]} | {t["label"] for t in entry["objects"]})
        matched = match_to_truth(rec["objects"], entry["objects"])
        twice += labelled_twice(rec["objects"], entry["objects"])
        true_objects += len(entry["objects"])
        for qa in rec.get("qa", []):
            verdict = judge(qa, objs, entry["objects"], matched, rec["width"], rec["height"], surfaces.get(name),
                            vocab)
            if verdict is None:
                continue
            c = counts.setdefault(qa["type"], [0, 0])
            c[0] += int(verdict)
            c[1] += 1
    per_type = {t: {"true": c[0], "scored": c[1], "share": round(c[0] / c[1], 4)}
                for t, c in sorted(counts.items(), key=lambda kv: SCORED_TYPES.index(kv[0]))}
    n_true, n = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    return {"share": round(n_true / n, 4) if n else None, "true": n_true, "scored": n, "per_type": per_type,
            "labelled_twice": twice, "true_objects": true_objects,
            "labelled_twice_share": round(twice / true_objects, 4) if true_objects else None}


def read_surfaces(path: str | Path) -> dict[str, str]:
    """Image name -> surface from a COCO file that records one (the world's ``images[].surface``, else
    the one ``surface`` its annotations share); {} for other files."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return {}
    per_image: dict = {}
    for a in data.get("annotations") or []:
        if isinstance(a, dict) and isinstance(a.get("surface"), str):
            per_image.setdefault(a.get("image_id"), set()).add(a["surface"])
    out = {}
    for im in data["images"]:
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str):
            continue
        surface = im.get("surface")
        if not isinstance(surface, str) or not surface:
            shared = per_image.get(im.get("id"), set())
            surface = next(iter(shared)) if len(shared) == 1 else None
        if surface:
            out[im["file_name"].replace("\\", "/")] = surface
    return out
