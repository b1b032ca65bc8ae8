"""The end of `make demo`: the fine-tuned world VLM asked through the guide's API about a held-out scene, each answer
next to the truth, then the test split's per-type table against the majority answer of the training split.

    python scripts/demo_answers.py --model_path demo_output/vlm_model --base_model world/models/vlm \\
        --truth demo_output/test_truth.json --images_dir demo_output/world/heldout_images \\
        --model_metrics demo_output/metrics.json --majority_metrics demo_output/majority.json

The scenes are the first ``--scenes`` images of the test split (never trained on, taken in the file's order, not
chosen by the answers) that have an object "the <label> <where>" picks out alone, so that every call has one right
answer: ``answer_question("How many objects are there?")``,
``describe_object(image, bbox=..., label=...)`` (its fields read back and checked one by one),
``label_object(image, bbox)`` ("what is in this box?") and ``locate(image, "the can at the top of the image")``
(right when its IoU with the true box is 0.5 or more). The truth is the world's own ground truth
(world/make_truth.py), never the detectors' output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: its folder is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_core.boxes import iou  # noqa: E402
from vlm_core.io_utils import InputError, read_json  # noqa: E402
from vlm_core.prompts import COUNT as COUNT_QUESTION  # noqa: E402
from vlm_core.prompts import count_answer  # noqa: E402
from vlm_core.runtime import plural  # noqa: E402
from world.api_eval import FIELDS, description_fields, field_right, scored_items  # noqa: E402
from world.report import headline  # noqa: E402


def pick_scenes(truth: dict, items: list[dict], n: int = 1) -> list[tuple[dict, dict]]:
    """The first ``n`` test images, in the file's order, with an object that a grounding phrase picks out alone,
    each with that object (the first such object of the image)."""
    picked = []
    for record in truth["images"]:
        item = next((it for it in items if it["image"] == record["image"] and it["phrase"]), None)
        if item is not None:
            picked.append((record, item))
            if len(picked) == n:
                break
    return picked


def mark(right: bool | None) -> str:
    return "–" if right is None else "right" if right else "wrong"


def ask_scene(vlm, image: Path, record: dict, item: dict) -> list[tuple[str, str, str, bool | None]]:
    """(call, answer, truth, right) of each call of the guide's API on the scene."""
    rows = []
    said = vlm.answer_question(str(image), COUNT_QUESTION, max_new_tokens=16).strip()
    truth = count_answer(len(record["objects"]))
    rows.append((f'answer_question("{COUNT_QUESTION}")', said, truth, said == truth))
    bbox = [round(v) for v in item["bbox"]]
    described = vlm.describe_object(str(image), bbox=item["bbox"], label=item["label"], max_new_tokens=64).strip()
    fields = description_fields(described, item["label"])
    checks = [(f, field_right(f, fields, item["truth"], item["label"])) for f in FIELDS]
    judged = [(f, r) for f, r in checks if r is not None]
    summary = ", ".join(f"{f} {mark(r)}" for f, r in judged)
    truth_text = next(o["description"] for o in record["objects"] if o["id"] == item["id"])
    # Right when every field the truth states is; the line names each field, so a half-right description shows.
    rows.append((f'describe_object(image, bbox={bbox}, label="{item["label"]}")', described,
                 f"{truth_text}\n  fields: {summary} ({sum(r for _, r in judged)} of {len(judged)})",
                 all(r for _, r in judged)))
    label = vlm.label_object(str(image), item["bbox"], max_new_tokens=8).strip()
    rows.append((f"label_object(image, bbox={bbox})", label, item["label"],
                 label.lower().strip(" .") == item["label"]))
    box = vlm.locate(str(image), item["phrase"], max_new_tokens=32)
    overlap = iou(box, item["bbox"]) if box is not None else 0.0
    rows.append((f'locate(image, "{item["phrase"]}")', "not a box" if box is None else
                 f"[{', '.join(f'{v:.0f}' for v in box)}]",
                 f"[{', '.join(f'{v:.0f}' for v in item['bbox'])}] (IoU {overlap:.2f})", overlap >= 0.5))
    return rows


def per_type_table(model: dict, majority: dict) -> list[str]:
    lines = ["| question type | n | metric | model | majority of the training split |", "|---|---|---|---|---|"]
    for qtype, scores in model.get("per_type", {}).items():
        metric = headline(qtype)
        theirs = majority.get("per_type", {}).get(qtype, {}).get(metric)
        mine = scores.get(metric)
        lines.append(f"| {qtype} | {scores.get('n', '–')} | {metric} | "
                     f"{'–' if mine is None else f'{mine:.3f}'} | {'–' if theirs is None else f'{theirs:.3f}'} |")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="the fine-tuned model (a LoRA adapter or a whole model)")
    p.add_argument("--base_model", default=None, help="the model the adapter was trained on (with a LoRA adapter)")
    p.add_argument("--truth", required=True, help="the test split's ground truth (world/make_truth.py --only)")
    p.add_argument("--images_dir", required=True, help="folder of the test images")
    p.add_argument("--model_metrics", required=True, help="evaluate.py's output for the model's test answers")
    p.add_argument("--majority_metrics", required=True,
                   help="evaluate.py's output for the majority answers (world/report.py baselines)")
    p.add_argument("--scenes", type=int, default=3, help="held-out scenes to ask about, the first of the test split "
                   "(default 3)")
    args = p.parse_args(argv)
    if args.scenes < 1:
        p.error("--scenes must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        truth = read_json(Path(args.truth))
        model_metrics, majority_metrics = read_json(Path(args.model_metrics)), read_json(Path(args.majority_metrics))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    items = scored_items(truth, max_objects=None, seed=0)
    picked = pick_scenes(truth, items, args.scenes)
    if not picked:
        print("error: no test image has an object that a grounding phrase picks out alone", file=sys.stderr)
        return 2
    from vlm_inference.vlm_inference import VLMInference

    vlm = VLMInference(model_path=args.model_path, base_model=args.base_model, device="cpu")
    right = asked = 0
    for record, item in picked:
        image = Path(args.images_dir) / record["image"]
        print(f"held-out scene {record['image']} (test split, never trained on): "
              f"{plural(len(record['objects']), 'object')} on the {record.get('surface') or 'ground'}; asked about its "
              f"{item['label']} at {[round(v) for v in item['bbox']]}")
        rows = ask_scene(vlm, image, record, item)
        for call, answer, truth_text, ok in rows:
            print(f"\nvlm.{call}\n  -> {answer}\n  truth: {truth_text}  ({mark(ok)})")
        print(f"\n{sum(bool(r[3]) for r in rows)} of {len(rows)} answers right on this scene.\n")
        right, asked = right + sum(bool(r[3]) for r in rows), asked + len(rows)
    print(f"{right} of {asked} answers right on {plural(len(picked), 'held-out scene')}. The test split, every question "
          "against the ground truth:\n")
    print("\n".join(per_type_table(model_metrics, majority_metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
