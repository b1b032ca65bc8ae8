"""Training throughput with length-grouped batches against random batches.

    python benchmarks/bench_training.py                      # tiny LLaVA, offline, ~1 min on 2 CPU cores
    python benchmarks/bench_training.py --base_model llava-hf/llava-1.5-7b-hf --train_data d.json --image_dir imgs

Trains the same model on the same data twice with train_vlm.py (LoRA, same seed and steps):
once with batches grouped by length (the default), once with random batches
(--no_group_by_length), and prints for each the training samples/s and the fraction of
padding tokens in the batches. The last line is ``ratio: grouped samples/s / random samples/s``.
The default dataset mixes records of 1 to 6 turns, so lengths vary a lot, as in stage 3's output.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: benchmarks/, data/ and models/ are not installed packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

from fixtures.toy_data import toy_records, write_toy_images  # noqa: E402
from vlm_core import prompts  # noqa: E402
from vlm_core.io_utils import write_json_atomic  # noqa: E402

CLASSES = ["glass", "plastic", "can", "paper", "bottle"]


def varied_dataset(directory: Path, n: int, seed: int) -> tuple[Path, Path]:
    """``n`` records on the toy images with 1..6 turns each (lengths from ~40 to ~300 tokens)."""
    rng = random.Random(seed)
    image_dir = write_toy_images(directory / "images")
    images = [r["image"] for r in toy_records()]
    records = []
    for i in range(n):
        turns = rng.choice([1, 1, 1, 2, 3, 6])
        conv, types = [], []
        for t in range(turns):
            label = rng.choice(CLASSES)
            box = "[" + ", ".join(f"{rng.random():.2f}" for _ in range(4)) + "]"
            q, a, kind = rng.choice([
                (prompts.COUNT_CLASS.format(plural=prompts.plural(label)),
                 prompts.count_answer(rng.randint(0, 5), label), "count"),
                (prompts.REGION_DESCRIPTION.format(box=box),
                 f"{prompts.article(label).capitalize()} {label} on the grass near the {rng.choice(CLASSES)}.",
                 "region_description"),
                (prompts.EXISTS.format(label=label), rng.choice(["Yes", "No"]), "exists"),
                (prompts.GROUNDING.format(text=f"the {label}"), box, "grounding"),
            ])
            conv += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + q}, {"from": "gpt", "value": a}]
            types.append(kind)
        image = images[i % len(images)]
        records.append({"id": f"{image}#{i}", "image": image, "width": 0, "height": 0,
                        "conversations": conv, "qa_types": types})
    path = directory / "varied_llava.json"
    write_json_atomic(path, records)
    return path, image_dir


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base_model", default=None, help="LLaVA checkpoint (default: build the tiny LLaVA)")
    p.add_argument("--train_data", default=None, help="LLaVA file to train on (default: a generated varied one)")
    p.add_argument("--image_dir", default=None, help="images of --train_data")
    p.add_argument("--num_records", type=int, default=96, help="records in the generated dataset (default 96)")
    p.add_argument("--batch_size", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--max_steps", type=int, default=12, help="optimizer steps per run (default 12)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each way; the best is kept (default 2)")
    p.add_argument("--lora_r", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of data generation and training (default 0)")
    p.add_argument("--extra", default="", help="more train_vlm.py flags for both runs, e.g. '--bf16'")
    return p.parse_args(argv)


def run(train_args: list[str], out: Path, group: bool) -> dict:
    from vlm_training.train_vlm import main as train_main
    argv = train_args + ["--output_dir", str(out)] + ([] if group else ["--no_group_by_length"])
    start = time.perf_counter()
    if train_main(argv) != 0:
        raise SystemExit(f"train_vlm.py failed with {' '.join(argv)}")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - start
    return metrics


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        tmp = Path(tmp)
        base_model = args.base_model
        if base_model is None:
            from fixtures.tiny_models import build_llava
            base_model = str(build_llava(tmp / "models", seed=0))
        if args.train_data:
            if not args.image_dir:
                raise SystemExit("--train_data needs --image_dir")
            data, image_dir = Path(args.train_data), Path(args.image_dir)
        else:
            data, image_dir = varied_dataset(tmp / "data", args.num_records, args.seed)
        train_args = ["--train_data", str(data), "--image_dir", str(image_dir), "--base_model", base_model,
                      "--use_lora", "--lora_r", str(args.lora_r), "--lora_alpha", str(2 * args.lora_r),
                      "--batch_size", str(args.batch_size), "--max_steps", str(args.max_steps),
                      "--save_steps", "0", "--logging_steps", str(args.max_steps), "--seed", str(args.seed)]
        train_args += args.extra.split()
        # A short warm-up run so that the first measured run does not pay for imports and caches.
        run(train_args[:-2] + ["--max_steps", "1"], tmp / "warmup", True)
        # Alternate the two ways and keep each one's best run: the CPU may be shared with others.
        results = {}
        for repeat in range(args.repeats):
            for name, group in (("random", False), ("grouped", True)):
                m = run(train_args, tmp / f"{name}{repeat}", group)
                best = results.get(name)
                if best is None or m["train_samples_per_second"] > best["train_samples_per_second"]:
                    results[name] = m
    print(f"\ndataset: {results['grouped']['train_data']['examples']} examples, batch {args.batch_size}, "
          f"{args.max_steps} steps per run, best of {args.repeats} runs each")
    for name in ("random", "grouped"):
        m = results[name]
        print(f"{name:8s} batches: {m['train_samples_per_second']:7.2f} samples/s, "
              f"padding {100 * m['padding_fraction']:5.1f}% of tokens, train loss {m['final_train_loss']:.4f}")
    ratio = results["grouped"]["train_samples_per_second"] / results["random"]["train_samples_per_second"]
    pad_ratio = results["random"]["padding_fraction"] / max(results["grouped"]["padding_fraction"], 1e-9)
    print(f"padding reduced {pad_ratio:.2f}x by length grouping")
    print(f"ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
