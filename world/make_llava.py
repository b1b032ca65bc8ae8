"""Build the world's small LLaVA (random weights) with a tokenizer trained on the world's own text.

    python world/make_llava.py --world world --out world_output/models/llava

A ``LlavaForConditionalGeneration`` of about 2M parameters, the sizes that learn the world
in minutes on a CPU: CLIP vision tower width 128 x 3 layers on 64 px images with 8 px patches
(64 image tokens, its last layer as the feature layer), a Llama language model width 192 x 3
layers, and a 512-token byte-level BPE trained on the world's questions and answers (the
ground-truth Q&A of the training pool, made by the toolkit's own Q&A code) plus the chat
template's words, so a turn costs a few tokens instead of dozens. Processor: llava-1.5-hf's
chat template, a ``CLIPImageProcessor`` at 64 px. ``world/pretrain_vision.py`` then pretrains
its vision tower on the training pool's boxes (the world's stand-in for a pretrained CLIP), and
``vlm_training/train_vlm.py --base_model OUT`` fine-tunes it like any LLaVA checkpoint (language model
and projector, the tower frozen; ``--train_vision_tower`` trains a tower that was never pretrained).
``--vision_tower_from`` and ``--language_model_from`` start it from a pretrained tower (``world/models/tower``)
and a pretrained language model with its own tokenizer (``world/models/lm``, ``world/pretrain_lm.py``), as a
real LLaVA starts from CLIP and Vicuna; the BPE is then that model's, not built again.
Every size is a flag (``--text_width``, ``--vision_layers``, ``--image_size``, ...) for experiments,
and ``--feature_strategy full`` keeps the CLS token as an image token; the defaults are the sizes
above and LLaVA-1.5's "default" strategy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if __package__ in (None, ""):  # run as a file: its folder is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_annotation.label_readers import load_coco  # noqa: E402
from vlm_core.io_utils import InputError  # noqa: E402
from world.llava_build import SIZE_HELP, SIZES, build_llava  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", required=True, help="world folder written by world/make_world.py (its train.json)")
    p.add_argument("--out", required=True, help="folder to write the model and processor into")
    p.add_argument("--vocab_size", type=int, default=512, help="BPE vocabulary size (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--feature_strategy", choices=("default", "full"), default="default",
                   help="vision_feature_select_strategy: default drops the CLS token (LLaVA-1.5), full keeps it")
    p.add_argument("--vision_tower_from", default=None,
                   help="start from this pretrained vision tower (world/models/tower, or pretrain_vision.py's --out or "
                   "--tower_out) instead of random weights; its sizes must be the model's (default: random)")
    p.add_argument("--language_model_from", default=None,
                   help="start from this pretrained language model and its tokenizer (world/models/lm, or "
                   "pretrain_lm.py's --out or --lm_out) instead of random weights and a BPE built here; its sizes "
                   "must be the model's (default: random)")
    for name, default in SIZES.items():
        p.add_argument(f"--{name}", type=int, default=default, help=f"{SIZE_HELP[name]} (default {default})")
    args = p.parse_args(argv)
    if args.vocab_size < 300:
        p.error("--vocab_size must be at least 300 (256 bytes + specials + merges)")
    if any(getattr(args, name) < 1 for name in SIZES):
        p.error("every size must be >= 1")
    for name in ("vision_width", "text_width"):
        if getattr(args, name) % 32:
            p.error(f"--{name} must be a multiple of 32 (heads of 32 dimensions)")
    if args.image_size % args.patch:
        p.error("--image_size must be a multiple of --patch")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        coco = load_coco(Path(args.world) / "train.json")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.vision_tower_from and not (Path(args.vision_tower_from) / "config.json").is_file():
        print(f"error: --vision_tower_from {args.vision_tower_from}: no config.json there (a tower written by "
              "world/pretrain_vision.py --tower_out, e.g. world/models/tower)", file=sys.stderr)
        return 2
    if args.language_model_from and not (Path(args.language_model_from) / "config.json").is_file():
        print(f"error: --language_model_from {args.language_model_from}: no config.json there (a language model "
              "written by world/pretrain_lm.py --lm_out, e.g. world/models/lm)", file=sys.stderr)
        return 2
    try:
        out = build_llava(Path(args.out), coco, args.seed, args.vocab_size, args.feature_strategy,
                          args.vision_tower_from, args.language_model_from, **{k: getattr(args, k) for k in SIZES})
    except ValueError as e:
        flag = "--language_model_from" if "language model" in str(e) else "--vision_tower_from"
        print(f"error: {flag}: {e}", file=sys.stderr)
        return 2
    info = json.loads((out / "build_info.json").read_text(encoding="utf-8"))
    tower = f", the vision tower of {args.vision_tower_from}" if args.vision_tower_from else ""
    tower += f", the language model of {args.language_model_from}" if args.language_model_from else ""
    print(f"built the world LLaVA ({info['parameters']:,} parameters, {info['vocab_size']}-token BPE{tower}) in "
          f"{time.perf_counter() - start:.1f}s -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
