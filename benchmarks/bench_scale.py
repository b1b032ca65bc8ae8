"""Scale of the file stages: split, convert, merge and evaluate on generated files of N images.

    python benchmarks/bench_scale.py                         # 20k images, a few minutes on 2 busy CPU cores
    python benchmarks/bench_scale.py --images 1000000 --layout jsonl --keep_dir /data/scale

(At 1M images use ``--layout jsonl``: the JSON floor itself, ``json.load`` of a 5 GB file, needs
about 23 GB of memory. The stages do not: they stream either layout.)

Writes a valid annotation file of ``--images`` images (about 6 KB and 25 Q&A pairs an image, like
a real run; no model involved), two shard files for merge, and ``--predictions`` prediction lines,
then runs each stage as its own process (``main`` of the real script) and reports its seconds and
peak memory (max RSS of that process). The floor is a plain ``json.load`` + ``json.dump`` of the
same annotation file, measured in the same run, also in a process of its own. Each stage's time
is printed as a multiple of that floor; the last line, ``ratio: N.NN``, is the worst stage's
multiple (LOWER IS BETTER: 1.00 would be as fast as reading and writing the file once).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __package__ in (None, ""):  # run as a file: benchmarks/ is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_core import prompts  # noqa: E402
from vlm_core.schema import box_placeholder  # noqa: E402

LABELS = ["glass", "plastic bag", "can", "paper", "bottle", "battery", "cardboard box", "tin can"]
SIZES = [(640, 480), (480, 640), (1024, 768), (800, 800), (1280, 720)]
WORDS = ("green brown crushed clear folded shiny small large old torn plastic metal glass wet dry "
         "lying standing near beside under over the a on of with its left right edge corner").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_record(i: int, rng: random.Random, n_qa: int = 25) -> dict:
    """One valid image record: 1-8 objects, ``n_qa`` Q&A pairs of every type (about 6 KB)."""
    width, height = SIZES[i % len(SIZES)]
    objects = []
    for k in range(rng.randint(1, 8)):
        x1, y1 = rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.7)
        x2, y2 = min(width, x1 + rng.uniform(8, width * 0.3)), min(height, y1 + rng.uniform(8, height * 0.3))
        objects.append({"id": k, "label": rng.choice(LABELS),
                        "bbox": [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)],
                        "score": round(rng.uniform(0.25, 1.0), 4), "sources": rng.choice([["yolo"], ["yolo", "rtdetr"]]),
                        "description": f"Here is a {rng.choice(LABELS)}. " + _sentence(rng, 12)})
    qa = []
    for _ in range(n_qa):
        o = rng.choice(objects)
        box = box_placeholder(o["id"])
        kind = rng.choice(["count", "count_class", "exists", "location", "region_description",
                           "region_label", "grounding", "relation"])
        if kind == "count":
            q, a, ids = prompts.COUNT, prompts.count_answer(len(objects)), []
        elif kind == "count_class":
            n = sum(ob["label"] == o["label"] for ob in objects)
            q, a, ids = prompts.COUNT_CLASS.format(plural=prompts.plural(o["label"])), \
                prompts.count_answer(n, o["label"]), []
        elif kind == "exists":
            q, a, ids = prompts.EXISTS.format(label=rng.choice(LABELS)), rng.choice(["Yes.", "No."]), []
        elif kind == "location":
            q, a, ids = prompts.LOCATION_BOXED.format(label=o["label"], box=box), _sentence(rng, 5), [o["id"]]
        elif kind == "region_description":
            q, a, ids = prompts.REGION_DESCRIPTION.format(box=box), _sentence(rng, 10), [o["id"]]
        elif kind == "region_label":
            q, a, ids = prompts.REGION_LABEL.format(box=box), o["label"], [o["id"]]
        elif kind == "grounding":
            q, a, ids = prompts.GROUNDING.format(text=f"the {o['label']}"), box, [o["id"]]
        else:
            b = rng.choice(objects)
            q = prompts.RELATION.format(label_a=o["label"], box_a=box, label_b=b["label"],
                                        box_b=box_placeholder(b["id"]))
            a, ids = f"The {o['label']} is to the left of the {b['label']}.", [o["id"], b["id"]]
        qa.append({"question": q, "answer": a, "type": kind, "object_ids": ids})
    return {"image": f"part{i % 97:02d}/img_{i:07d}.jpg", "width": width, "height": height,
            "caption": _sentence(rng, 8), "objects": objects, "qa": qa}


def make_meta(seed: int) -> dict:
    return {"tool_version": "bench", "models": {"yolo": "yolov8x.pt", "rtdetr": "rtdetr-l.pt"},
            "thresholds": {"conf": 0.25, "iou": 0.5}, "seed": seed}


def image_path(i: int) -> str:
    # Paths sorted in the order of i, as an annotation run writes them (sorted by path).
    return f"part{i // 10000:03d}/img_{i:07d}.jpg"


def _pool(n: int, seed: int) -> list[dict]:
    # A pool of distinct records reused under new paths: generating 1M records one by one would
    # take longer than the stages it measures; sizes and contents stay realistic.
    rng = random.Random(seed)
    return [make_record(i, rng) for i in range(min(n, 2000))]


def write_annotations(path: Path, indices, pool: list[dict], meta: dict, skipped: list[dict]) -> int:
    """An annotation file of the given images, in the layout its name asks for, as a run writes it."""
    from vlm_core.schema import AnnotationWriter
    with AnnotationWriter(path, style="lines") as w:
        for i in indices:
            w.write(dict(pool[i % len(pool)], image=image_path(i)))
        w.finish(skipped, meta)
    return path.stat().st_size


def write_predictions(path: Path, m: int, pool: list[dict], seed: int) -> None:
    """``m`` prediction lines as predict.py writes them (answers: the reference, or a changed word)."""
    from vlm_training.conversion import image_records
    rng = random.Random(seed)
    turns = []
    for k, rec in enumerate(pool):
        for r in image_records(rec, k, "pool", 0):
            conv = r["conversations"]
            turns += [(conv[2 * t]["value"].removeprefix("<image>\n"), conv[2 * t + 1]["value"], r["qa_types"][t])
                      for t in range(len(conv) // 2)]
    with open(path, "w", encoding="utf-8") as f:
        i = t = 0
        for _ in range(m):
            question, reference, kind = turns[(i * 25 + t) % len(turns)]
            answer = reference
            if rng.random() < 0.3:
                words = reference.split()
                words[rng.randrange(len(words))] = rng.choice(WORDS)
                answer = " ".join(words)
            f.write(json.dumps({"id": f"{image_path(i)}#0", "image": image_path(i), "turn": t, "question": question,
                                "answer": answer, "reference": reference, "type": kind, "model": "bench"},
                               ensure_ascii=False) + "\n")
            t += 1
            if t == 25:
                i, t = i + 1, 0


_FLOOR = r"""
import json, sys
src, dst = sys.argv[1], sys.argv[2]
if src.endswith(".jsonl"):
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
        for line in f:
            g.write(json.dumps(json.loads(line)) + "\n")
else:
    with open(src, encoding="utf-8") as f:
        data = json.load(f)
    with open(dst, "w", encoding="utf-8") as g:
        json.dump(data, g)
"""

# Runs a module (or the floor's code) and writes its peak RSS to $BENCH_HWM_FILE at exit. VmHWM of
# /proc/self/status counts this program only: ru_maxrss of a child also counts the memory of the
# parent it was forked from, before exec.
_MEASURED = r"""
import atexit, os, runpy, sys
def _hwm():
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_HWM_FILE"], "w") as out:
        out.write(str(kib))
atexit.register(_hwm)
target, sys.argv = sys.argv[1], sys.argv[1:]
if target == "-c":
    exec(compile(_CODE, "<floor>", "exec"))
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def run_measured(cmd: list[str], cwd: Path) -> tuple[float, float, float]:
    """Run ``cmd`` (``[python, "-m", module, ...]`` or ``[python, "-c", code, ...]``); return its
    CPU seconds (user + system), wall seconds and peak RSS in MiB.

    CPU seconds are what the ratios use: on a machine shared with other work, wall time measures
    the neighbours as much as the stage.
    """
    py, mode, target, *rest = cmd
    launcher = _MEASURED.replace("_CODE", repr(target)) if mode == "-c" else _MEASURED
    argv = [py, "-c", launcher, "-c", *rest] if mode == "-c" else [py, "-c", launcher, target, *rest]
    with tempfile.NamedTemporaryFile(prefix="bench_hwm.", delete=False) as f:
        hwm_file = f.name
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "BENCH_HWM_FILE": hwm_file,
                                     "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                 os.environ.get("PYTHONPATH")]))})
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            sys.exit(f"failed ({code}): {' '.join(cmd[:2] + cmd[3:] if mode == '-c' else cmd)}\n"
                     f"{out.decode(errors='replace')[-2000:]}")
        peak_kib = int(Path(hwm_file).read_text() or 0)
    finally:
        Path(hwm_file).unlink(missing_ok=True)
    return usage.ru_utime + usage.ru_stime, seconds, peak_kib / 1024


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20_000, help="images in the generated annotation file")
    p.add_argument("--predictions", type=int, default=None,
                   help="prediction lines for evaluate (default: 5 per image, at most 500k)")
    p.add_argument("--layout", choices=["json", "jsonl"], default="json",
                   help="file layout of every file the stages read and write (the LLaVA file stays a JSON list)")
    p.add_argument("--stages", default="split,convert,merge,evaluate",
                   help="comma-separated stages to run (split, convert, merge, evaluate)")
    p.add_argument("--keep_dir", default=None, help="work in this folder and keep the files (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    args = p.parse_args(argv)
    if args.images < 10:
        p.error("--images must be >= 10")
    if args.predictions is None:
        args.predictions = min(5 * args.images, 500_000)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(args.stages) - {"split", "convert", "merge", "evaluate"}
    if unknown:
        p.error(f"--stages: unknown stage(s) {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    py = sys.executable
    repo = REPO
    ext = "." + args.layout
    with tempfile.TemporaryDirectory(prefix="bench_scale.") as tmp:
        work = Path(args.keep_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        env_note = f"{args.images} images, layout {args.layout}"
        t0 = time.perf_counter()
        ann = work / f"annotations{ext}"
        preds = work / "predictions.jsonl"
        stamp = work / f"generated{ext}.stamp"
        shards, predicting = "merge" in args.stages, "evaluate" in args.stages
        wanted = json.dumps({"images": args.images, "predictions": args.predictions if predicting else 0,
                             "shards": shards, "seed": args.seed})
        if stamp.is_file() and stamp.read_text() == wanted:  # --keep_dir of an earlier run: the same files
            print(f"reusing the files generated in {work}", flush=True)
        else:
            stamp.unlink(missing_ok=True)
            pool = _pool(args.images, args.seed)
            meta = make_meta(args.seed)
            write_annotations(ann, range(args.images), pool, meta, [{"image": "broken.jpg", "reason": "truncated"}])
            for k in range(2 if shards else 0):
                write_annotations(work / f"shard{k}{ext}", range(k, args.images, 2), pool,
                                  dict(meta, shard={"index": k, "count": 2}),
                                  [{"image": f"broken{k}.jpg", "reason": "truncated"}])
            if predicting:
                write_predictions(preds, args.predictions, pool, args.seed)
            stamp.write_text(wanted)
        size = ann.stat().st_size
        print(f"{env_note} ({size / 2**20:.0f} MiB, {size / args.images / 1024:.1f} KiB an image), "
              f"{args.predictions if predicting else 0} prediction lines; generated in "
              f"{time.perf_counter() - t0:.0f}s", flush=True)

        print(f"{'':10s} {'cpu':>8s} {'wall':>8s} {'peak RSS':>12s}")
        floor_s, floor_wall, floor_mb = run_measured([py, "-c", _FLOOR, str(ann), str(work / f"floor{ext}")], work)
        print(f"{'json floor':10s} {floor_s:7.1f}s {floor_wall:7.1f}s {floor_mb:8.0f} MiB   "
              f"(json.load + json.dump of {ann.name})", flush=True)
        commands = {
            "split": [py, "-m", "vlm_training.split_data", "--input_file", str(ann), "--train_file",
                      str(work / f"train{ext}"), "--val_file", str(work / f"val{ext}"),
                      "--test_file", str(work / f"test{ext}")],
            "convert": [py, "-m", "vlm_training.convert_to_llava_format", "--annotation_file", str(ann),
                        "--output_file", str(work / "train_llava.json")],
            "merge": [py, "-m", "vlm_annotation.merge_annotations", "--input_files", str(work / f"shard0{ext}"),
                      str(work / f"shard1{ext}"), "--output_file", str(work / f"merged{ext}")],
            "evaluate": [py, "-m", "vlm_inference.evaluate", "--predictions", str(preds),
                         "--output_file", str(work / "metrics.json")],
        }
        results = {}
        for stage in args.stages:
            floor = (floor_s, "json floor")
            if stage == "evaluate":
                pf_s, pf_wall, pf_mb = run_measured([py, "-c", _FLOOR, str(preds), str(work / "floor_pred.jsonl")],
                                                    work)
                floor = (pf_s, "json floor of predictions.jsonl")
                print(f"{'pred floor':10s} {pf_s:7.1f}s {pf_wall:7.1f}s {pf_mb:8.0f} MiB   "
                      f"(json.loads + json.dumps of each line of {preds.name})", flush=True)
            seconds, wall, mb = run_measured(commands[stage], repo)
            results[stage] = seconds / floor[0]
            print(f"{stage:10s} {seconds:7.1f}s {wall:7.1f}s {mb:8.0f} MiB   {results[stage]:.2f} x {floor[1]} (cpu)",
                  flush=True)
        worst = max(results, key=results.get)
        print(f"worst: {worst} at {results[worst]:.2f} x its json floor in CPU seconds ({env_note}; "
              "lower is better)")
        print(f"ratio: {results[worst]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
