"""The world run's baselines, description check and results table (used by world/world.sh).

    python world/report.py baselines --train world_output/train_llava.json \\
        --questions world_output/predictions.jsonl --out_dir world_output/baselines
    python world/report.py surface --annotations world_output/annotations.json \\
        --ground_truth world/heldout.json --output_file world_output/surface.json
    python world/report.py results --run_dir world_output \\
        [--readme README.md --command "make world" --minutes 20]

``baselines`` answers every test question (read from a predictions file, which carries the
question, its type and its ground-truth reference) two ways and writes predictions files that
``vlm_inference/evaluate.py`` scores like the model's: ``majority.jsonl`` (the most frequent
training answer to the same question, else to its type; for grounding the mean training box) and
``chance.jsonl`` (an answer drawn uniformly, seeded, from the training split's answers of that
type). ``surface`` checks that each annotated object's description names the surface its scene
truly lies on. ``results`` gathers the run's figures into ``results.json`` and ``results.md``
and prints the table; with ``--readme`` it also writes the table (and a line naming the
command, WORLD_MINUTES, the run's seconds and the date) between the README's
``<!-- world-results:begin -->`` and ``<!-- world-results:end -->`` markers, so that the
README's table is the command's output, never typed by hand. Detection gets a chance row:
YOLO's own boxes scored on another held-out image (same number, sizes and classes of boxes,
no look at the image), the figure a detector that does not look at the image reaches.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a file: its folder is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_annotation.describer import description_surface  # noqa: E402
from vlm_core.boxes import format_box, parse_box  # noqa: E402
from vlm_core.io_utils import (  # noqa: E402
    InputError,
    iter_jsonl,
    read_json,
    write_json_atomic,
    write_text_atomic,
)
from vlm_core.prompts import IMAGE_TOKEN  # noqa: E402
from vlm_core.runtime import plural, report_input_errors  # noqa: E402
from vlm_core.schema import QA_TYPES  # noqa: E402

# The figure each question type is judged by (metrics.json of vlm_inference/evaluate.py).
HEADLINE = {"count": "count_exact", "count_class": "count_exact", "grounding": "acc@0.5",
            "region_description": "cider"}
DETECTORS = ("yolo", "rtdetr", "wbf", "nms", "fusion_sweep", "chance")
SKILL_CURVES = "skill_curves.png"  # beside results.md
README_BEGIN, README_END = "<!-- world-results:begin -->", "<!-- world-results:end -->"


def headline(qtype: str) -> str:
    return HEADLINE.get(qtype, "accuracy")


# --------------------------------------------------------------------------- baselines
def training_answers(train_llava: Path) -> tuple[dict[str, list[str]], dict[tuple[str, str], list[str]]]:
    """Every answer of the training split, by question type and by (type, question)."""
    answers: dict[str, list[str]] = {}
    by_question: dict[tuple[str, str], list[str]] = {}
    for rec in read_json(train_llava):
        turns, types = rec["conversations"], rec.get("qa_types") or []
        for k, qtype in enumerate(types):
            question = turns[2 * k]["value"].replace(IMAGE_TOKEN, "").strip()
            answers.setdefault(qtype, []).append(turns[2 * k + 1]["value"])
            by_question.setdefault((qtype, question), []).append(turns[2 * k + 1]["value"])
    return answers, by_question


def mean_box(boxes: list[str]) -> str:
    parsed = [b for b in (parse_box(t) for t in boxes) if b is not None]
    if not parsed:
        return format_box([0.25, 0.25, 0.75, 0.75])
    return format_box([sum(b[i] for b in parsed) / len(parsed) for i in range(4)])


def write_baselines(train_llava: Path, questions: Path, out_dir: Path, seed: int = 0) -> dict[str, Path]:
    answers, by_question = training_answers(train_llava)
    majority = {t: Counter(a).most_common(1)[0][0] for t, a in answers.items() if a}
    # The most frequent answer to the very same question ("Is there a can in this image?" -> "No, ...")
    # where the training split asked it; else the type's most frequent answer.
    majority_q = {k: Counter(a).most_common(1)[0][0] for k, a in by_question.items()}
    if "grounding" in answers:
        majority["grounding"] = mean_box(answers["grounding"])
    rng = random.Random(seed)
    rows = {"majority": [], "chance": []}
    for _, q in iter_jsonl(questions):
        qtype = q.get("type")
        base = {k: q[k] for k in ("id", "image", "turn", "question", "reference", "type") if k in q}
        pool = answers.get(qtype) or [""]
        answer = majority.get(qtype, "") if qtype == "grounding" else \
            majority_q.get((qtype, q.get("question", "")), majority.get(qtype, ""))
        rows["majority"].append(dict(base, answer=answer, model="majority of the training split"))
        rows["chance"].append(dict(base, answer=rng.choice(sorted(set(pool))), model="chance"))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, recs in rows.items():
        paths[name] = out_dir / f"{name}.jsonl"
        write_text_atomic(paths[name], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return paths


# --------------------------------------------------------------------------- descriptions
def surface_accuracy(annotations: Path, ground_truth: Path) -> dict:
    """Share of described objects whose description names the surface their image truly lies on."""
    coco = read_json(ground_truth)
    truth = {im["file_name"]: im.get("surface") for im in coco["images"]}
    n = named = right = 0
    wrong: Counter = Counter()
    for rec in read_json(annotations)["images"]:
        true = truth.get(rec["image"])
        if true is None:
            continue
        for obj in rec["objects"]:
            n += 1
            _, said = description_surface(obj.get("description", ""), obj["label"])
            named += bool(said)
            if said == true:
                right += 1
            else:
                wrong[f"{true} -> {said or '(none)'}"] += 1
    return {"surface_accuracy": right / n if n else None, "surface_named": named / n if n else None,
            "objects": n, "confusions": dict(wrong.most_common(8))}


# --------------------------------------------------------------------------- results
def _load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _per_type(metrics: dict | None, qtype: str) -> float | None:
    if not metrics:
        return None
    return metrics.get("per_type", {}).get(qtype, {}).get(headline(qtype))


def detection_figures(metrics: dict | None) -> dict:
    """mAP50 / mAP / precision / recall of each detector alone, both fusions, and the fusion --sweep recommends."""
    out: dict = {}
    if not metrics:
        return out
    table = metrics.get("detectors") or {}
    for name, key in (("yolo", "yolo"), ("rtdetr", "rtdetr"), ("wbf", "yolo + rtdetr wbf"),
                      ("nms", "yolo + rtdetr nms")):
        if key in table:
            out[name] = {k: table[key].get(k) for k in ("map50", "map", "precision", "recall")}
    best = metrics.get("recommended")
    if best:
        setting = next((s for s in metrics.get("sweep", []) if s.get("flags") == best.get("flags")), None)
        if setting:
            out["fusion_sweep"] = {"flags": best["flags"], **{k: setting.get(k) for k in
                                                              ("map50", "map", "precision", "recall")}}
    return out


def detection_chance(annotations: Path, ground_truth: Path, detector: str = "yolo", seed: int = 0) -> dict | None:
    """mAP50 of ``detector``'s boxes (kept in the annotation file) moved to another image.

    Every image gets the boxes found on another one (a random cyclic shift of the image
    order), scaled to its size: the same number, sizes, classes and scores of boxes as the
    detector's, placed without looking at the image. None when the file kept no detector boxes.
    """
    from vlm_annotation.label_scoring import coco_evaluate, load_ground_truth

    records = [r for r in read_json(annotations)["images"] if detector in (r.get("detector_boxes") or {})]
    truth = load_ground_truth(ground_truth)
    records = [r for r in records if r["image"] in truth.images]
    if len(records) < 2:
        return None
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    predictions = {}
    for k, i in enumerate(order):
        target, source = records[i], records[order[(k + 1) % len(order)]]
        sx, sy = target["width"] / source["width"], target["height"] / source["height"]
        predictions[target["image"]] = [
            {"label": d["label"], "score": d["score"],
             "bbox": [d["bbox"][0] * sx, d["bbox"][1] * sy, d["bbox"][2] * sx, d["bbox"][3] * sy]}
            for d in source["detector_boxes"][detector] if d["label"] in truth.vocabulary]
    scored = coco_evaluate({r["image"]: truth.images[r["image"]] for r in records}, predictions, truth.vocabulary)
    return {"what": f"{detector}'s boxes of another image", **{k: scored.get(k) for k in
                                                                ("map50", "map", "precision", "recall")}}


API_FIELDS = {"label": "the given label named", "surface": "surface", "position": "position (3x3 cell)",
              "size": "size word", "relation": "relation to a neighbour"}
# The size word again, each true size weighted alike (api_eval.balanced_accuracy): 88% of the world's objects are
# medium-sized, so its plain accuracy leaves a model little room above the majority.
SIZE_BALANCED = ("size_balanced", "size word, balanced over the true sizes")


def api_results(api_dir: Path) -> dict:
    """The guide's API scored by world/api_eval.py: ``describe_object`` per field, ``region_label`` and
    ``grounding`` (Acc@0.5, mean IoU, unparsed share), each as model / majority / untrained / chance."""
    model, untrained = _load(api_dir / "model.json"), _load(api_dir / "untrained.json")
    baselines = _load(api_dir / "baselines.json") or {}
    if not model:
        return {}
    who = {"model": model, "majority": baselines.get("majority"), "untrained": untrained,
           "chance": baselines.get("chance")}

    def pick(*keys):
        out = {}
        for name, scores in who.items():
            value = scores
            for k in keys:
                value = (value or {}).get(k)
            out[name] = value
        return out

    described = {f: {**pick("describe_object", f, "accuracy"), "n": model["describe_object"][f]["n"]}
                 for f in API_FIELDS}
    if model["describe_object"]["size"].get("balanced") is not None:
        described[SIZE_BALANCED[0]] = {**pick("describe_object", "size", "balanced"),
                                       "n": model["describe_object"]["size"]["n"]}
    grounding = {"metric": "acc50", **pick("grounding", "acc50"), "n": model["grounding"]["n"],
                 **{k: pick("grounding", k) for k in ("acc50", "mean_iou", "unparsed")}}
    return {"describe_object": described,
            "region_label": {"metric": "accuracy", **pick("region_label", "accuracy"),
                             "n": model["region_label"]["n"], "via": "answer_question"},
            "grounding": dict(grounding, via="locate")}


def collect_results(run: Path) -> dict:
    model, untrained = _load(run / "eval" / "model.json"), _load(run / "eval" / "untrained.json")
    majority, chance = _load(run / "eval" / "majority.json"), _load(run / "eval" / "chance.json")
    vlm = {}
    for qtype in QA_TYPES:
        row = {"metric": headline(qtype), "model": _per_type(model, qtype), "majority": _per_type(majority, qtype),
               "untrained": _per_type(untrained, qtype), "chance": _per_type(chance, qtype)}
        if row["model"] is None and row["majority"] is None:
            continue
        row["n"] = (model or {}).get("per_type", {}).get(qtype, {}).get("n")
        vlm[qtype] = row
    vlm.update(api_results(run / "api"))
    timings, wall = {}, None
    if (run / "timings.tsv").is_file():  # "stage<TAB>seconds" lines written by world/world.sh
        for line in (run / "timings.tsv").read_text(encoding="utf-8").splitlines():
            name, _, secs = line.partition("\t")
            if not secs:
                continue
            # "wall" is the run's own clock: stages that run side by side (one core each) overlap,
            # so their sum is more than the run took.
            if name == "wall":
                wall = float(secs)
            else:
                timings[name] = float(secs)
    detection = detection_figures(_load(run / "detection.json"))
    if detection and (run / "annotations.json").is_file() and (run / "world" / "heldout.json").is_file():
        chance = detection_chance(run / "annotations.json", run / "world" / "heldout.json")
        if chance:
            detection["chance"] = chance
    label_metrics = _load(run / "detection.json") or {}
    results = {
        "detection": detection,
        # What the VLM is taught: the generated Q&A of the auto-labels, true of each scene or not (qa_truth).
        "labels_qa": {k: label_metrics.get("qa_truth", {}).get(k)
                      for k in ("share", "per_type", "labelled_twice", "true_objects")} if label_metrics else {},
        "descriptions": _load(run / "surface.json") or {},
        "vlm": vlm,
        "stages": timings,
        "seconds": wall if wall is not None else round(sum(timings.values()), 1) if timings else None,
    }
    return results


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def results_table(results: dict) -> str:
    lines = ["| figure | value |", "|---|---|"]
    det = results["detection"]
    for name in DETECTORS:
        if name in det:
            what = f"fusion at the --sweep setting ({det[name]['flags']})" if name == "fusion_sweep" else \
                f"chance ({det[name]['what']})" if name == "chance" else name
            lines.append(f"| detection mAP50, {what} | {_f(det[name].get('map50'))} |")
    qa = results.get("labels_qa") or {}
    if qa.get("share") is not None:
        count = (qa.get("per_type") or {}).get("count") or {}
        lines.append(f"| auto-label Q&A true of the scene (all types) | {_f(qa['share'])} |")
        if count.get("share") is not None:
            lines.append(f"| auto-label count answers true of the scene | {_f(count['share'])} |")
        lines.append(f"| true objects labelled twice (two classes) | {qa.get('labelled_twice')} of "
                     f"{qa.get('true_objects')} |")
    d = results["descriptions"]
    if d:
        lines.append(f"| descriptions naming the true surface | {_f(d.get('surface_accuracy'))} |")
    lines += ["", "| question type | n | metric | model | majority | untrained | chance |",
              "|---|---|---|---|---|---|---|"]
    for qtype, row in results["vlm"].items():
        if qtype == "describe_object":
            continue
        name = f"{qtype} ({row['via']})" if row.get("via") else qtype
        lines.append(f"| {name} | {_f(row.get('n'))} | {row['metric']} | {_f(row['model'])} | {_f(row['majority'])} "
                     f"| {_f(row['untrained'])} | {_f(row['chance'])} |")
    described = results["vlm"].get("describe_object")
    if described:  # the guide's API on the test scenes' true objects (world/api_eval.py)
        lines += ["", "| describe_object(image, bbox, label): field right | n | model | majority | untrained | chance |",
                  "|---|---|---|---|---|---|"]
        rows = list(API_FIELDS.items())
        rows.insert(rows.index(("size", API_FIELDS["size"])) + 1, SIZE_BALANCED)
        for field, what in rows:
            if field not in described:
                continue
            row = described[field]
            lines.append(f"| {what} | {_f(row.get('n'))} | {_f(row['model'])} | {_f(row['majority'])} "
                         f"| {_f(row['untrained'])} | {_f(row['chance'])} |")
        ground = results["vlm"].get("grounding") or {}
        for key, what in (("mean_iou", "locate: mean IoU"), ("unparsed", "locate: answers that are not a box")):
            if key in ground:
                r = ground[key]
                lines.append(f"| {what} | {_f(ground.get('n'))} | {_f(r['model'])} | {_f(r['majority'])} "
                             f"| {_f(r['untrained'])} | {_f(r['chance'])} |")
    if results.get("seconds") is not None:
        stages = ", ".join(f"{k} {v:.0f}s" for k, v in results["stages"].items())
        overlapped = sum(results["stages"].values()) > results["seconds"] + 1
        side = " (some side by side, one core each)" if overlapped else ""
        lines += ["", f"wall time {results['seconds']:.0f}s; stages{side}: {stages}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- families
FAMILY_ORDER = ("llava", "vip_llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
FAMILY_TYPES = ("count", "surface", "location", "region_label")  # then grounding (locate), scored apart
FAMILIES_BEGIN, FAMILIES_END = "<!-- world-families:begin -->", "<!-- world-families:end -->"


def family_runs(run: Path) -> dict[str, Path]:
    """The run folders of a families run, in :data:`FAMILY_ORDER`: each family's ``run/families/<name>``
    (world/families.sh); LLaVA-1.5's is the world run itself where families.sh did not train one."""
    found = {}
    for name in FAMILY_ORDER:
        if (run / "families" / name / "eval" / "model.json").is_file():
            found[name] = run / "families" / name
        elif name == "llava" and (run / "eval" / "model.json").is_file():
            found[name] = run
    return found


def family_results(run: Path) -> dict:
    """``<family>.<type>.{model,majority,untrained,n}`` for count, surface, location and region_label ("what is in
    this box?", through the API), and ``<family>.grounding`` (``locate``, boxes parsed by the family's parser and
    scored in pixels of the original image) with ``acc50``, ``mean_iou`` and ``unparsed``, each as
    model / majority (mean training box) / untrained; plus the share of predict.py's grounding answers with no box or
    outside the image (``frame_check``) and the training seconds."""
    out = {}
    for name, folder in family_runs(run).items():
        vlm = collect_results(folder)["vlm"]
        row = {}
        for qtype in FAMILY_TYPES:
            if qtype in vlm:
                row[qtype] = {k: vlm[qtype].get(k) for k in ("metric", "model", "majority", "untrained", "n")}
        ground = vlm.get("grounding") or {}
        if "acc50" in ground:
            row["grounding"] = {"metric": "acc50", **{k: ground["acc50"].get(k) for k in ("model", "majority",
                                                                                           "untrained")},
                                "n": ground.get("n"), **{k: ground[k] for k in ("acc50", "mean_iou", "unparsed")}}
        checked = (_load(folder / "eval" / "model.json") or {}).get("grounding")
        if checked:
            row["frame_check"] = {k: checked.get(k) for k in ("n", "unparsed_share", "outside_share")}
        args = _load(folder / "vlm_model" / "train_args.json") or {}
        training = args.get("training_args") or {}
        row["training"] = {"steps": training.get("max_steps"), "batch_size": training.get("per_device_train_batch_size"),
                           "vision_tower_trained": args.get("train_vision_tower"),
                           "scenes": len(_load(folder / "train_llava.json") or []) or None,
                           # families.sh's replay: the pool's grounding records mixed into the training file
                           "replay_records": (sum(1 for _ in iter_jsonl(folder / "replay_llava.jsonl"))
                                              if (folder / "replay_llava.jsonl").is_file() else None)}
        timings = folder / "timings.tsv"
        if timings.is_file():
            for line in timings.read_text(encoding="utf-8").splitlines():
                key, _, secs = line.partition("\t")
                if key in ("vlm_train", "wall") and secs:
                    row[f"{key}_seconds" if key == "vlm_train" else "seconds"] = float(secs)
        out[name] = row
    return out


FAMILIES_NOTE = ("Each cell: model (majority of the training split / the same model untrained); locate's majority is the "
                 "mean training box. Held-out test scenes; region_label and locate through the guide's API "
                 "(world/api_eval.py), locate's boxes parsed by each family's own parser and scored in pixels. wall s: the "
                 "family's whole path, converted, trained, asked and scored (the world run's own row: that whole run).")


def families_table(results: dict) -> str:
    """One row per family: each figure as model (majority / untrained); :data:`FAMILIES_NOTE` says so. The seconds
    are the family's training and its whole path (conversion, training, both predictions and API passes, scoring)."""
    def cell(row: dict | None) -> str:
        if not row or row.get("model") is None:
            return "–"
        return f"{_f(row['model'])} ({_f(row.get('majority'))} / {_f(row.get('untrained'))})"

    lines = ["| family | count | surface | location | region_label | locate Acc@0.5 | locate mean IoU "
             "| locate: not a box | training s | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        ground = row.get("grounding") or {}
        unparsed = (ground.get("unparsed") or {}).get("model")
        lines.append(f"| {name} | " + " | ".join(cell(row.get(t)) for t in FAMILY_TYPES)
                     + f" | {cell(ground)} | {cell(ground.get('mean_iou'))} | {_f(unparsed)} "
                     f"| {_f(round(row['vlm_train_seconds'])) if row.get('vlm_train_seconds') else '–'} "
                     f"| {_f(round(row['seconds'])) if row.get('seconds') else '–'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- README
def results_block(table: str, command: str, minutes: str, seconds: float | None, when: str) -> str:
    """What goes between the README's markers: one line saying how the table was made, then the table."""
    took = "" if seconds is None else f", {seconds:.0f} s"
    return f"Generated by `{command}` (WORLD_MINUTES={minutes}{took}, {when}):\n\n{table.rstrip()}\n"


def replace_results_block(text: str, block: str, where: str = "README", begin: str = README_BEGIN,
                          end_marker: str = README_END) -> str:
    """``text`` with whatever lies between the begin and end markers replaced by ``block`` (markers kept,
    each on its own line). ValueError naming ``where`` unless each marker occurs once, begin first."""
    if text.count(begin) != 1 or text.count(end_marker) != 1:
        raise ValueError(f"{where}: needs exactly one {begin} and one {end_marker} line")
    start, end = text.index(begin) + len(begin), text.index(end_marker)
    if end < start:
        raise ValueError(f"{where}: {end_marker} comes before {begin}")
    return f"{text[:start]}\n{block.rstrip()}\n{text[end:]}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("baselines", help="majority and chance answers to the test questions")
    b.add_argument("--train", required=True, help="training split in LLaVA format (train_llava.json)")
    b.add_argument("--questions", required=True, help="a predictions.jsonl of the test questions (any model)")
    b.add_argument("--out_dir", required=True, help="folder for majority.jsonl and chance.jsonl")
    b.add_argument("--seed", type=int, default=0, help="seed of the chance answers (default 0)")
    s = sub.add_parser("surface", help="descriptions that name the object's true surface")
    s.add_argument("--annotations", required=True, help="annotation file of the held-out images")
    s.add_argument("--ground_truth", required=True, help="COCO ground truth with a surface per image")
    s.add_argument("--output_file", required=True, help="JSON file to write")
    r = sub.add_parser("results", help="results.json, results.md and the printed table of a world run")
    r.add_argument("--run_dir", required=True, help="the world run's output folder")
    r.add_argument("--readme", default=None,
                   help=f"also write the table between the {README_BEGIN} and {README_END} lines of this file")
    r.add_argument("--command", default="make world", help="the command named above the README table")
    r.add_argument("--minutes", default="20", help="WORLD_MINUTES of the run, named above the README table")
    f = sub.add_parser("families", help="families.json, families.md and the printed table of world/families.sh")
    f.add_argument("--run_dir", required=True, help="the world run's output folder (its families/ beside it)")
    f.add_argument("--seconds", type=float, default=None, help="the families run's wall time, named above the table")
    f.add_argument("--readme", default=None,
                   help=f"also write the table between the {FAMILIES_BEGIN} and {FAMILIES_END} lines of this file")
    f.add_argument("--command", default="make world-families", help="the command named above the README table")
    args = p.parse_args(argv)
    if args.action in ("results", "families") and args.readme:
        markers = (README_BEGIN, README_END) if args.action == "results" else (FAMILIES_BEGIN, FAMILIES_END)
        try:
            replace_results_block(Path(args.readme).read_text(encoding="utf-8"), "", f"--readme {args.readme}",
                                  *markers)
        except OSError as e:
            raise InputError(f"--readme: cannot read {args.readme}: {e.strerror or e}") from None
        except ValueError as e:
            raise InputError(str(e)) from None
    return args


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.action == "baselines":
        paths = write_baselines(Path(args.train), Path(args.questions), Path(args.out_dir), args.seed)
        print(f"baselines: {', '.join(str(p) for p in paths.values())}", flush=True)
    elif args.action == "surface":
        result = surface_accuracy(Path(args.annotations), Path(args.ground_truth))
        write_json_atomic(args.output_file, result)
        print(f"descriptions name the true surface for {_f(result['surface_accuracy'])} of "
              f"{plural(result['objects'], 'object')} -> {args.output_file}", flush=True)
    elif args.action == "families":
        run = Path(args.run_dir)
        results = family_results(run)
        if not results:
            raise InputError(f"--run_dir {run}: no trained family there (run world/families.sh)")
        table = families_table(results)
        write_json_atomic(run / "families.json", results)
        write_text_atomic(run / "families.md", f"{table}\n\n{FAMILIES_NOTE}\n")
        print(f"{table}\n\n{FAMILIES_NOTE}", flush=True)
        if args.readme:
            when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            took = "" if args.seconds is None else f", {args.seconds:.0f} s"
            plans = sorted({f"{r['training']['steps']} steps of {r['training']['batch_size']}"
                            for name, r in results.items() if name != "llava" and r.get("training", {}).get("steps")})
            scenes = sorted({r["training"]["scenes"] for r in results.values() if r.get("training", {}).get("scenes")})
            trained = f", each trained {' or '.join(plans)}" if plans else ""
            trained += f" on {' or '.join(map(str, scenes))} training scenes" if scenes else ""
            replays = sorted({r["training"]["replay_records"] for r in results.values()
                              if r.get("training", {}).get("replay_records")})
            trained += (f" plus {' or '.join(map(str, replays))} grounding records replayed from the pool their bases "
                        "were pretrained on" if replays else "")
            block = f"Generated by `{args.command}` ({len(results)} families{trained}{took}, {when}):\n\n{table}\n"
            readme = Path(args.readme)
            write_text_atomic(readme, replace_results_block(readme.read_text(encoding="utf-8"), block,
                                                            f"--readme {readme}", FAMILIES_BEGIN, FAMILIES_END))
            print(f"families table written into {readme}", flush=True)
    else:
        run = Path(args.run_dir)
        results = collect_results(run)
        table = results_table(results)
        # The learning curve of each question type, from the evaluations train_vlm.py --eval_generate ran.
        metrics = run / "vlm_model" / "metrics.json"
        from vlm_training.vlm_trainer import plot_skill_curves  # torch: only for this action
        if metrics.is_file() and plot_skill_curves(metrics, run / SKILL_CURVES):
            table += f"\n\nLearning curves of each question type while training (validation answers): {SKILL_CURVES}"
        write_json_atomic(run / "results.json", results)
        write_text_atomic(run / "results.md", table + "\n")
        print(table, flush=True)
        if args.readme:
            when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            block = results_block(table, args.command, args.minutes, results.get("seconds"), when)
            readme = Path(args.readme)
            write_text_atomic(readme, replace_results_block(readme.read_text(encoding="utf-8"), block,
                                                            f"--readme {readme}"))
            print(f"results table written into {readme}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
