"""Answers per second: batched generation (left-padded) against one question at a time.

    python benchmarks/bench_inference.py                       # tiny LLaVA built on the spot, offline
    python benchmarks/bench_inference.py --model_path llava-hf/llava-1.5-7b-hf --device cuda

Both ways answer the same questions about the same images with the same model, in one
process. Every answer is forced to exactly ``--new_tokens`` tokens (min = max new tokens),
so both do equal work whatever the (untrained) model would say. The last line is
``ratio: N.NN`` = batched answers/s divided by one-at-a-time answers/s.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: benchmarks/, data/ and models/ are not installed packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from PIL import Image, ImageDraw

from vlm_core import prompts, runtime


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default=None,
                        help="model to time (adapter, merged or base; default: a tiny LLaVA built offline)")
    parser.add_argument("--base_model", default=None, help="base model for a LoRA adapter --model_path")
    parser.add_argument("--num_questions", type=int, default=48, help="questions answered each way (default 48)")
    parser.add_argument("--batch_size", type=int, default=8, help="batch size of the batched way (default 8)")
    parser.add_argument("--new_tokens", type=int, default=16, help="tokens generated per answer (default 16)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    runtime.add_precision_flag(parser, "auto = bf16/fp16 on a GPU, fp32 on the CPU")
    return parser.parse_args(argv)


def workload(n: int) -> tuple[list[Image.Image], list[str]]:
    """``n`` (image, question) pairs: images of several shapes, questions of several lengths."""
    sizes = [(640, 480), (480, 640), (512, 512), (800, 300)]
    classes = ["glass", "plastic", "can", "paper", "bottle"]
    images, questions = [], []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        img = Image.new("RGB", (w, h), (40 * (i % 6), 120, 200 - 30 * (i % 5)))
        ImageDraw.Draw(img).rectangle([w // 4, h // 4, w // 2, h // 2], fill=(250, 250, 250))
        images.append(img)
        label = classes[i % len(classes)]
        box = f"[0.{10 + i % 40:02d}, 0.20, 0.{60 + i % 30:02d}, 0.70]"
        questions.append([
            prompts.COUNT,
            prompts.COUNT_CLASS.format(plural=prompts.plural(label)),
            prompts.EXISTS.format(label=label),
            prompts.REGION_DESCRIPTION.format(box=box),
            prompts.LOCATION_BOXED.format(label=label, box=box),
        ][i % 5])
    return images, questions


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from vlm_inference.vlm_inference import VLMInference

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model_path
        if model_path is None:
            from fixtures.tiny_models import build_llava
            model_path = str(build_llava(Path(tmp), seed=0))
        vlm = VLMInference(model_path, base_model=args.base_model, device=args.device, precision=args.precision)
        images, questions = workload(args.num_questions)
        gen = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
        print(f"model {args.model_path or 'tiny llava'} on {vlm.device} ({vlm.dtype}), "
              f"{args.num_questions} questions, {args.new_tokens} new tokens each, {torch.get_num_threads()} threads",
              flush=True)
        vlm.answer_questions(images[:args.batch_size], questions[:args.batch_size], batch_size=args.batch_size, **gen)
        vlm.answer_question(images[0], questions[0], **gen)  # warm-up both paths

        start = time.perf_counter()
        single = [vlm.answer_question(img, q, **gen) for img, q in zip(images, questions)]
        single_s = time.perf_counter() - start
        start = time.perf_counter()
        batched = vlm.answer_questions(images, questions, batch_size=args.batch_size, **gen)
        batched_s = time.perf_counter() - start

    same = sum(a == b for a, b in zip(single, batched))
    single_rate, batched_rate = len(single) / single_s, len(batched) / batched_s
    print(f"one at a time : {single_s:7.2f} s  {single_rate:8.2f} answers/s")
    print(f"batched ({args.batch_size:>3}) : {batched_s:7.2f} s  {batched_rate:8.2f} answers/s")
    print(f"identical answers: {same}/{len(single)}")
    print(f"ratio: {batched_rate / single_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
