"""The guide's own API scored on the world's held-out scenes: ``describe_object``, "what is in this box?"
(``label_object``) and ``locate``, each beside its baselines (issue 24).

    python world/api_eval.py ask --model_path world_output/vlm_model --truth world_output/test_truth.json \\
        --images_dir world_output/world/heldout_images --output_file world_output/api/model.json
    python world/api_eval.py baselines --train world_output/train.json --truth world_output/test_truth.json \\
        --output_file world_output/api/baselines.json

``ask`` loads the model with :class:`vlm_inference.vlm_inference.VLMInference`, as a user would, and
calls ``describe_objects`` (batched ``describe_object``) with each test object's true box and label,
``label_objects`` (batched ``label_object``: "What is the object in this region: <box>? Answer with one
word.", the region_label question, asked through ``answer_question``'s loop) and
``locate`` with "the <label> <where it is>" (objects that phrase picks out alone). Each description is
parsed into fields (the label it names, surface, 3x3 cell, size word, first relation: the sentence
forms of ``vlm_annotation.describer.compose_description``) and each field is scored against the same
fields of the world's true description; grounding gets Acc@0.5, mean IoU (an unparsed answer counts
0) and the share of answers that do not parse as a box. ``baselines`` scores, on the same items, the
majority value of each field in the training split's annotations, a value drawn from them at random
(chance, seeded), and for grounding the mean training box (and a random training box) in each
image's size. The answers are written beside the scores (``<output_file stem>.jsonl``).
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a file: its folder is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_annotation.describer import description_surface  # noqa: E402
from vlm_annotation.spatial import position_phrase, position_word  # noqa: E402
from vlm_core.boxes import iou  # noqa: E402
from vlm_core.io_utils import InputError, read_json, write_json_atomic, write_text_atomic  # noqa: E402
from vlm_core.runtime import plural, report_input_errors  # noqa: E402

FIELDS = ("label", "surface", "position", "size", "relation")
_ARTICLE = r"(?:a|an|the)"
_LABEL = re.compile(rf"^\s*Here is {_ARTICLE} ([a-z][a-z -]*?)\.", re.IGNORECASE)
_CELL = re.compile(r"\b(?:in|at|on) the ((?:top|bottom)(?: left| right)?|left|right|centre) of the image\b")
_SIZE = re.compile(r"\bIt is (small|medium-sized|large)\.")
_RELATION = re.compile(rf"\b(to the left of|to the right of|above|below|next to) {_ARTICLE} ([a-z][a-z-]*)")
_RELATIONS_SENTENCE = re.compile(r"\bIt is ((?:to the left of|to the right of|above|below|next to) [^.]*)\.")


def description_fields(text: str, label: str | None = None) -> dict:
    """The fields a description of ``compose_description``'s form states; a field it does not state is None.

    "Here is a can. The can is on the grass, in the bottom left of the image. It is small. It is to the
    left of a bottle and above a glass." -> label "can", surface "grass", position "bottom left", size
    "small", relations [("to the left of", "bottle"), ("above", "glass")] (relation: the first of them).
    ``label``: the label the surface sentence is read with (default: the one the description names).
    """
    text = text or ""
    named = _LABEL.search(text)
    said_label = named.group(1).strip().lower() if named else None
    _, surface = description_surface(text, label or said_label or "")
    cell = _CELL.search(text)
    size = _SIZE.search(text)
    sentence = _RELATIONS_SENTENCE.search(text)
    relations = [(p, o) for p, o in _RELATION.findall(sentence.group(1))] if sentence else []
    return {"label": said_label, "surface": surface or None, "position": cell.group(1) if cell else None,
            "size": size.group(1) if size else None, "relations": relations,
            "relation": relations[0] if relations else None}


def field_right(field: str, said: dict, truth: dict, label: str) -> bool | None:
    """Whether the described ``field`` is true; None where the truth has no value (no relation to check)."""
    if field == "label":
        return said["label"] == label
    if field == "relation":
        if not truth["relations"]:
            return None
        return said["relation"] is not None and tuple(said["relation"]) in {tuple(r) for r in truth["relations"]}
    return said[field] is not None and said[field] == truth[field]


# --------------------------------------------------------------------------- the test items
def scored_items(truth: Path | dict, max_objects: int | None, seed: int) -> list[dict]:
    """Every object of the truth file (or of its contents, already read), a seeded sample of ``max_objects``
    when there are more (None: all), each with its image, box, label, true description fields and, where
    "the <label> <place>" picks it out alone, the grounding phrase."""
    items = []
    for rec in (truth if isinstance(truth, dict) else read_json(truth))["images"]:
        w, h = rec["width"], rec["height"]
        cells = Counter((o["label"], position_word(o["bbox"], w, h)) for o in rec["objects"])
        for obj in rec["objects"]:
            unique = cells[(obj["label"], position_word(obj["bbox"], w, h))] == 1
            items.append({"image": rec["image"], "width": w, "height": h, "id": obj["id"], "label": obj["label"],
                          "bbox": obj["bbox"], "truth": description_fields(obj.get("description", ""), obj["label"]),
                          "phrase": f"the {obj['label']} {position_phrase(obj['bbox'], w, h)}" if unique else None})
    if max_objects is not None and len(items) > max_objects:
        keep = set(random.Random(seed).sample(range(len(items)), max_objects))
        items = [it for k, it in enumerate(items) if k in keep]
    return items


# --------------------------------------------------------------------------- scoring
def _ratio(hits: int, n: int) -> float | None:
    return hits / n if n else None


def score(items: list[dict], descriptions: list[dict], labels: list[str | None],
          boxes: list[list[float] | None]) -> dict:
    """Scores of one set of answers: ``descriptions[i]`` the fields said of ``items[i]``, ``labels[i]`` its
    one-word answer, ``boxes[i]`` the box located for its phrase (None: not asked, or not parsed)."""
    out: dict = {"describe_object": {}, "region_label": {}, "grounding": {}}
    for field in FIELDS:
        right = [field_right(field, d, it["truth"], it["label"]) for it, d in zip(items, descriptions)]
        judged = [r for r in right if r is not None]
        out["describe_object"][field] = {"accuracy": _ratio(sum(judged), len(judged)), "n": len(judged)}
    out["describe_object"]["size"]["balanced"] = balanced_accuracy(
        [(it["truth"]["size"], d["size"]) for it, d in zip(items, descriptions) if it["truth"]["size"]])
    said = [_one_word(a) for a in labels]
    out["region_label"] = {"accuracy": _ratio(sum(s == it["label"] for s, it in zip(said, items)), len(items)),
                           "n": len(items)}
    asked = [(it, b) for it, b in zip(items, boxes) if it["phrase"]]
    ious = [iou(b, it["bbox"]) if b is not None else 0.0 for it, b in asked]
    out["grounding"] = {"acc50": _ratio(sum(v >= 0.5 for v in ious), len(ious)),
                        "mean_iou": _ratio(sum(ious), len(ious)) if ious else None,
                        "unparsed": _ratio(sum(b is None for _, b in asked), len(asked)), "n": len(asked)}
    return out


def balanced_accuracy(pairs: list[tuple[str, str | None]]) -> float | None:
    """The mean, over the true values, of the share of their ``(truth, said)`` pairs said right. The size word needs
    it: 88% of the world's objects are medium-sized, so plain accuracy gives the majority 0.88 and leaves a model no
    room to show it tells small and large apart; balanced, the majority scores 1/3 (one of three sizes always right).
    [("small", "small"), ("small", None), ("large", "small")] -> (1/2 + 0/1) / 2 = 0.25."""
    per_value: dict[str, list[bool]] = {}
    for truth, said in pairs:
        per_value.setdefault(truth, []).append(said == truth)
    return _ratio(sum(sum(v) / len(v) for v in per_value.values()), len(per_value))


def _one_word(answer: str | None) -> str | None:
    """"Can." / "can" / " a can" -> "can" (the one-word answer the question asks for)."""
    if answer is None:
        return None
    words = re.findall(r"[a-z][a-z-]*", answer.lower())
    words = [w for w in words if w not in ("a", "an", "the")]
    return words[0] if words else None


# --------------------------------------------------------------------------- ask a model
def ask(model_path: str, items: list[dict], images_dir: Path, batch_size: int, max_new_tokens: int,
        box_prompt: str | None = None) -> list[dict]:
    """Each item's description, one-word label and located box, through the guide's API."""
    from vlm_inference.vlm_inference import VLMInference

    vlm = VLMInference(model_path=model_path, device="cpu", box_prompt=box_prompt)
    paths = [str(images_dir / it["image"]) for it in items]
    described = vlm.describe_objects([(p, it["bbox"], it["label"]) for p, it in zip(paths, items)],
                                     batch_size=batch_size, max_new_tokens=max_new_tokens)
    labels = vlm.label_objects([(p, it["bbox"]) for p, it in zip(paths, items)], batch_size=batch_size,
                               max_new_tokens=8)
    asked = [i for i, it in enumerate(items) if it["phrase"]]  # objects a phrase picks out alone
    found = vlm.locate_objects([(paths[i], items[i]["phrase"]) for i in asked], batch_size=batch_size,
                               max_new_tokens=max_new_tokens)
    located: list = [None] * len(items)
    for i, box in zip(asked, found):
        located[i] = box
    return [{"image": it["image"], "id": it["id"], "label": it["label"], "bbox": it["bbox"], "description": d,
             "region_label": lab, "phrase": it["phrase"], "located": box}
            for it, d, lab, box in zip(items, described, labels, located)]


def score_answers(items: list[dict], answers: list[dict]) -> dict:
    return score(items, [description_fields(a["description"], it["label"]) for it, a in zip(items, answers)],
                 [a["region_label"] for a in answers], [a["located"] for a in answers])


# --------------------------------------------------------------------------- baselines
def training_values(train_file: Path) -> dict[str, list]:
    """Every value each field takes in the training split's annotations (their descriptions and labels),
    and every training box as fractions of its image."""
    values: dict[str, list] = {f: [] for f in FIELDS}
    values["box"] = []
    for rec in read_json(train_file)["images"]:
        w, h = rec["width"], rec["height"]
        for obj in rec["objects"]:
            said = description_fields(obj.get("description", ""), obj["label"])
            values["label"].append(obj["label"])
            for field in ("surface", "position", "size", "relation"):
                if said[field] is not None:
                    values[field].append(tuple(said[field]) if field == "relation" else said[field])
            x1, y1, x2, y2 = obj["bbox"]
            values["box"].append((x1 / w, y1 / h, x2 / w, y2 / h))
    return values


def baseline_answers(items: list[dict], values: dict[str, list], how: str, seed: int = 0) -> tuple:
    """The fields, labels and boxes a baseline gives every item: ``how`` "majority" (the most frequent
    training value; the mean training box) or "chance" (a training value drawn at random, seeded)."""
    rng = random.Random(seed)
    if how == "majority":
        pick = {f: Counter(v).most_common(1)[0][0] if v else None for f, v in values.items() if f != "box"}
        n = len(values["box"]) or 1
        mean = tuple(sum(b[i] for b in values["box"]) / n for i in range(4)) if values["box"] else (.25, .25, .75, .75)
    fields, labels, boxes = [], [], []
    for it in items:
        said = {f: (pick[f] if how == "majority" else rng.choice(values[f]) if values[f] else None) for f in FIELDS}
        said["relation"] = tuple(said["relation"]) if said["relation"] else None
        said["relations"] = [said["relation"]] if said["relation"] else []
        fields.append(said)
        labels.append(said["label"])
        frac = mean if how == "majority" else rng.choice(values["box"]) if values["box"] else (.25, .25, .75, .75)
        boxes.append([frac[0] * it["width"], frac[1] * it["height"], frac[2] * it["width"], frac[3] * it["height"]])
    return fields, labels, boxes


# --------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    for name, what in (("ask", "a model's answers through VLMInference"), ("baselines", "majority and chance")):
        s = sub.add_parser(name, help=what)
        s.add_argument("--truth", required=True, help="ground-truth annotation file of the test scenes "
                                                       "(world/make_truth.py --only test.json)")
        s.add_argument("--output_file", required=True, help="JSON file of the scores (answers beside it, .jsonl)")
        s.add_argument("--max_objects", type=int, default=400,
                       help="score a seeded sample of this many test objects at most (default 400)")
        s.add_argument("--seed", type=int, default=0, help="seed of the sample and of chance (default 0)")
        if name == "ask":
            s.add_argument("--model_path", required=True, help="the model folder (what train_vlm.py wrote, "
                                                               "or a base model)")
            s.add_argument("--images_dir", required=True, help="folder of the test scenes' images")
            s.add_argument("--batch_size", type=int, default=64, help="questions per generate call (default 64)")
            s.add_argument("--max_new_tokens", type=int, default=64,
                           help="longest description or box answer, in tokens (default 64)")
            s.add_argument("--box_prompt", choices=("text", "visual", "both"), default=None,
                           help="how region questions name their box (default: as the model was trained)")
        else:
            s.add_argument("--train", required=True, help="the training split's annotation file (train.json)")
    args = p.parse_args(argv)
    if args.max_objects < 1:
        p.error(f"--max_objects must be >= 1, got {args.max_objects}")
    return args


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    items = scored_items(Path(args.truth), args.max_objects, args.seed)
    if not items:
        raise InputError(f"--truth {args.truth}: no objects to ask about")
    out = Path(args.output_file)
    if args.action == "ask":
        answers = ask(args.model_path, items, Path(args.images_dir), args.batch_size, args.max_new_tokens,
                      args.box_prompt)
        result = {"model": args.model_path, **score_answers(items, answers)}
        rows = answers
    else:
        values = training_values(Path(args.train))
        result, rows = {}, []
        for how in ("majority", "chance"):
            fields, labels, boxes = baseline_answers(items, values, how, args.seed)
            result[how] = score(items, fields, labels, boxes)
            rows += [{"baseline": how, "image": it["image"], "id": it["id"], "fields": f, "region_label": lab,
                      "located": b} for it, f, lab, b in zip(items, fields, labels, boxes)]
    write_text_atomic(out.with_suffix(".jsonl"), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_json_atomic(out, result)
    scores = result if args.action == "ask" else result["majority"]
    d = scores["describe_object"]
    print(f"{args.action}: {plural(len(items), 'object')}; describe_object " +
          ", ".join(f"{f} {_fmt(d[f]['accuracy'])}" for f in FIELDS) +
          f"; region_label {_fmt(scores['region_label']['accuracy'])}; grounding Acc@0.5 "
          f"{_fmt(scores['grounding']['acc50'])} -> {out}", flush=True)
    return 0


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
