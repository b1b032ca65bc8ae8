"""Pretrain the world LLaVA's language model on the world's text alone, as a stand-in for Vicuna.

    python world/pretrain_lm.py --coco world/train.json --base_model world_output/models/llava \
        --out world_output/models/llava_lm --lm_out world/models/lm --max_steps 3000

A real LLaVA starts from a language model that already reads numbers: Vicuna knows that a box
``[0.12, 0.70, 0.30, 0.95]`` lies at the bottom left before it ever sees an image. The world LLaVA's
language model (``world/make_llava.py``) starts from random weights, and fine-tuned on a few thousand
images it never learnt to read the cell of a box from its numbers: every description said "in the centre
of the image" (docs/world.md, sessions 7 and 8), though the box in the question decides the cell.
So, like the vision tower (``world/pretrain_vision.py``), the language model is pretrained first, on
what can be learnt from text: the questions and answers of the training pool's ground truth (the
toolkit's own Q&A code on the world's labels, rendered as ``convert_to_llava_format.py`` renders them for
LLaVA-1.5, text box prompts), with no image. From the question alone it learns the wording of every
answer, the cell and size word of a box given as numbers, and where a box "at the top left" may lie;
what needs the image (how many objects, the surface, the class in a box) it learns as a prior only,
which the VLM's fine-tuning then replaces by what it sees.

The loss is the answer's tokens (the question is given), as in the VLM's fine-tuning. The last 5% of
the scenes are held out and scored after training: per question type, the share of answers the model
reproduces token for token given the question (teacher forcing: greedy decoding would write the same),
and, for the region descriptions, the share whose position phrase ("at the bottom left of the image")
and size word are right. Positions are those of the padded square, so a box's cell also depends on the
image's aspect ratio, which only the image tells: text alone cannot be right for every box.

``--out`` is the whole LLaVA (vision tower and projector unchanged) with its processor; ``--lm_out``
the language model alone (``LlamaForCausalLM``) with its tokenizer, what ``world/make_llava.py
--language_model_from`` takes (the committed ``world/models/lm``). Each is written to a temporary
folder and renamed, with ``pretrain_info.json`` (the command, the figures).

Given another family's world model (``world/make_family.py``, built from that language model), the same text is
rendered in that family's box frame and answer format (``{"bbox_2d": [67, 30, 169, 142], "label": "bag"}`` in
pixels after ``smart_resize`` for Qwen2.5-VL; ``convert_to_llava_format.py --base_model`` renders the same), so
its language model reads and writes boxes as that family's does before it sees an image (a real Qwen2.5-VL's was
trained on its own format; the transplanted one knows LLaVA-1.5's). ``--lm_out`` then holds the family model's
``model.language_model.*`` and ``lm_head.*`` tensors by name with its tokenizer, for ``make_family.py
--family_lm`` (the committed ``world/models/family_lms/<family>``).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if __package__ in (None, ""):  # run as a file: its folder is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_annotation.label_readers import load_coco  # noqa: E402
from vlm_core import families  # noqa: E402
from vlm_core.io_utils import InputError  # noqa: E402
from vlm_training.conversion import ImageBoxes, render_pair  # noqa: E402
from world.training import train_for, warmup_cosine, write_folder, write_llava  # noqa: E402
from world.truth import truth_annotations  # noqa: E402

# The describer's position phrase and size word in a region description (vlm_annotation/spatial.py).
POSITION = re.compile(r"(?:in|at|on) the [a-z ]+? of the image")
SIZE = re.compile(r"\b(?:small|medium-sized|large)\b")


def text_pairs(coco: dict, seed: int, qa_types: set[str] | None = None,
               frame: families.BoxFrame | None = None) -> list[tuple[str, str, str]]:
    """(type, question, answer) of every ground-truth Q&A pair of ``coco``'s images, every box in ``frame`` as
    convert renders it for that family (default: LLaVA-1.5's)."""
    pairs = []
    for i, rec in enumerate(truth_annotations(coco, seed)["images"]):
        boxes = ImageBoxes(rec, frame) if frame is not None else ImageBoxes(rec)
        for j, qa in enumerate(rec["qa"]):
            if qa_types is None or qa["type"] in qa_types:
                question, answer = render_pair(rec, qa, "world ground truth", f"images[{i}].qa[{j}]", boxes, "text")
                pairs.append((qa["type"], question, answer))
    return pairs


def encode(tokenizer, question: str, answer: str, max_length: int) -> tuple[list[int], list[int], list[tuple]]:
    """Token ids of one turn (the chat template's words, as a later turn of the VLM's conversation reads),
    the labels (-100 on the question) and each answer token's character span within ``answer``."""
    prompt = tokenizer(f"USER: {question} ASSISTANT:")["input_ids"]
    reply = tokenizer(f" {answer}", add_special_tokens=False, return_offsets_mapping=True)
    ids = prompt + reply["input_ids"] + [tokenizer.eos_token_id]
    labels = [-100] * len(prompt) + reply["input_ids"] + [tokenizer.eos_token_id]
    spans = [(a - 1, b - 1) for a, b in reply["offset_mapping"]] + [(len(answer), len(answer))]
    return ids[:max_length], labels[:max_length], spans


def field_right(answer: str, spans: list[tuple], right: list[bool], pattern: re.Pattern) -> bool | None:
    """Whether every answer token overlapping ``pattern``'s first match was predicted right (None: no match)."""
    match = pattern.search(answer)
    if not match:
        return None
    hits = [ok for (a, b), ok in zip(spans, right) if a < match.end() and b > match.start()]
    return bool(hits) and all(hits)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco", required=True, help="COCO json of the scenes whose ground-truth Q&A is the text: the "
                   "world's train.json (never the held-out pool)")
    p.add_argument("--base_model", required=True, help="world model to start from: the LLaVA of world/make_llava.py, "
                   "or another family's of world/make_family.py (its language model learns that family's box frame "
                   "and answer format); its language model and tokenizer")
    p.add_argument("--out", required=True, help="folder to write the LLaVA with the pretrained language model to")
    p.add_argument("--lm_out", default=None, help="also write the language model alone, with its tokenizer, here "
                   "(what world/make_llava.py --language_model_from takes; default: not written)")
    p.add_argument("--max_images", type=int, default=0, help="use the first N scenes of the COCO file (default 0: all)")
    p.add_argument("--qa_types", nargs="+", default=None, help="question types of the text (default: every type the "
                   "world's Q&A has)")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock cap of the whole run (default 10)")
    p.add_argument("--max_steps", type=int, default=3000, help="step cap (default 3000)")
    p.add_argument("--batch_size", type=int, default=64, help="question-answer pairs per step (default 64)")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW peak learning rate, warm-up then cosine "
                   "(default 1e-3)")
    p.add_argument("--max_length", type=int, default=160, help="tokens per pair at most (default 160)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Q&A sampling and the batches (default 0)")
    args = p.parse_args(argv)
    if Path(args.out).resolve() == Path(args.base_model).resolve():
        p.error("--out must differ from --base_model (the base stays as it was)")
    if args.minutes <= 0 or args.max_steps < 1 or args.batch_size < 1 or args.learning_rate <= 0:
        p.error("--minutes, --max_steps, --batch_size and --learning_rate must be > 0")
    if args.max_images < 0:
        p.error("--max_images must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    start = time.perf_counter()
    base, out = Path(args.base_model), Path(args.out)
    try:
        coco = load_coco(args.coco)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.max_images:
        coco["images"] = coco["images"][:args.max_images]
    model = AutoModelForImageTextToText.from_pretrained(base)
    tokenizer = AutoProcessor.from_pretrained(base).tokenizer
    # Another family's world model (world/make_family.py) learns its own frame and answer format: a real Qwen2.5-VL's
    # language model writes pixel boxes as JSON before it is fine-tuned, as Vicuna reads LLaVA-1.5's numbers.
    family = families.detect_family(base)
    frame = families.frame_for(base)
    lm = model.model.language_model

    # The last 5% of the scenes are held out of the training and scored after it.
    n_images = len(coco["images"])
    n_val = max(1, n_images // 20) if n_images >= 20 else 0
    train_coco = dict(coco, images=coco["images"][:n_images - n_val])
    val_coco = dict(coco, images=coco["images"][n_images - n_val:])
    types = set(args.qa_types) if args.qa_types else None
    train_pairs = text_pairs(train_coco, args.seed, types, frame)
    val_pairs = text_pairs(val_coco, args.seed, types, frame)
    if not train_pairs:
        print(f"error: --coco {args.coco}: no question of the types asked in its scenes", file=sys.stderr)
        return 2
    encoded = [encode(tokenizer, q, a, args.max_length) for _, q, a in train_pairs]
    print(f"language-model text: {len(train_pairs)} pairs of {n_images - n_val} scenes "
          f"({sum(len(e[0]) for e in encoded) / len(encoded):.0f} tokens each)", flush=True)

    def collate(rows):
        width = max(len(encoded[r][0]) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            x, y, _ = encoded[r]
            ids[k, :len(x)], labels[k, :len(y)], mask[k, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        return ids, labels, mask

    def loss_of(rows):
        ids, labels, mask = collate(rows)
        logits = model.lm_head(lm(input_ids=ids, attention_mask=mask).last_hidden_state)
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

    torch.manual_seed(args.seed)
    params = list(lm.parameters()) + list(model.lm_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    batches = iter(lambda: torch.randint(len(encoded), (args.batch_size,), generator=generator).tolist(), None)
    trained = torch.nn.ModuleList([lm, model.lm_head])
    run = train_for(trained, loss_of, batches, optimizer, minutes=args.minutes, max_steps=args.max_steps,
                    start=start, schedule=warmup_cosine(max(1, args.max_steps // 50)), replan_every=100,
                    log_every=100, name="language model")

    scores = score(model, lm, tokenizer, val_pairs, args.max_length) if val_pairs else {}
    seconds = time.perf_counter() - start
    info = {"script": "world/pretrain_lm.py", "argv": list(sys.argv[1:] if argv is None else argv), "seed": args.seed,
            "base_model": str(base), "family": family.name, "frame": frame.describe(), "scenes": n_images, "train_scenes": n_images - n_val, "pairs": len(train_pairs),
            "steps": run.steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
            "seconds": round(seconds, 1), "held_out": scores,
            "loss_curve": [[h["step"], round(h["loss"], 4)] for h in run.history]}

    def language_model_alone(tmp: Path) -> None:
        if family.name != "llava":  # the family's decoder and head by name, for make_family.py --family_lm
            from safetensors.torch import save_file

            tmp.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()
                       if k.startswith(("model.language_model.", "lm_head."))}, str(tmp / "model.safetensors"))
            tokenizer.save_pretrained(tmp)
            return
        from transformers import LlamaForCausalLM

        causal = LlamaForCausalLM(model.config.text_config)
        causal.model.load_state_dict(lm.state_dict())
        causal.lm_head.load_state_dict(model.lm_head.state_dict())
        causal.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    write_llava(out, base, model, info)
    if args.lm_out:
        write_folder(Path(args.lm_out), language_model_alone, info)
    figures = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float))
    print(f"pretrained the language model for {run.steps} steps on {len(train_pairs)} pairs in {seconds:.1f}s "
          f"(last loss {run.last_loss:.3f}; held out: {figures}) -> {out}", flush=True)
    if not math.isfinite(run.last_loss):
        print("error: the pretraining loss is not finite", file=sys.stderr)
        return 1
    return 0


def score(model, lm, tokenizer, pairs, max_length: int, batch_size: int = 64) -> dict:
    """Held-out figures: per type, the share of answers reproduced whole under teacher forcing; for region
    descriptions, the share whose position phrase and size word are right."""
    import torch

    whole: dict[str, list[bool]] = {}
    fields: dict[str, list[bool]] = {"position": [], "size": []}
    with torch.no_grad():
        for b in range(0, len(pairs), batch_size):
            chunk = pairs[b:b + batch_size]
            enc = [encode(tokenizer, q, a, max_length) for _, q, a in chunk]
            width = max(len(e[0]) for e in enc)
            ids = torch.full((len(enc), width), tokenizer.pad_token_id)
            mask = torch.zeros((len(enc), width), dtype=torch.long)
            for k, (x, _, _) in enumerate(enc):
                ids[k, :len(x)], mask[k, :len(x)] = torch.tensor(x), 1
            guess = model.lm_head(lm(input_ids=ids, attention_mask=mask).last_hidden_state).argmax(-1)
            for k, ((qtype, _, answer), (x, y, spans)) in enumerate(zip(chunk, enc)):
                at = [i for i in range(1, len(y)) if y[i] != -100]
                right = [bool(guess[k, i - 1] == y[i]) for i in at]
                whole.setdefault(qtype, []).append(all(right))
                if qtype == "region_description":
                    for name, pattern in (("position", POSITION), ("size", SIZE)):
                        ok = field_right(answer, spans[:len(right)], right, pattern)
                        if ok is not None:
                            fields[name].append(ok)
    scores = {f"{t}_whole": round(sum(v) / len(v), 4) for t, v in sorted(whole.items())}
    scores.update({f"region_description_{k}": round(sum(v) / len(v), 4) for k, v in fields.items() if v})
    scores["pairs"] = sum(len(v) for v in whole.values())
    return scores


if __name__ == "__main__":
    sys.exit(main())
