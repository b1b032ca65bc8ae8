"""Train a tiny BLIP captioner on the synthetic world, captioned the way the annotation stage prompts it.

    python world/train_blip.py --world world --out world_output/models/blip --minutes 2

The annotation stage (vlm_annotation/describer.py) shows the captioner a context crop of each
object (the box grown by ``--crop_margin`` 0.5 on every side) with the prompt
``"a photo of a glass lying on"``, and the whole image with ``"a picture of"``. This script
trains a small ``BlipForConditionalGeneration`` (ViT 64 px / patch 8, BERT-style decoder, a
word-level vocabulary of the world's words) on exactly those inputs, with targets
``"a photo of a glass lying on the grass"`` (the surface under the object, from the ground
truth) and ``"a picture of litter on the grass"``. Boxes are jittered a little, as a
detector's would be. Only the continuation after the prompt (and the end token) is
supervised. Seeded; bounded by ``--epochs`` and ``--minutes`` (the loop of
``world/training.py``). Writes ``OUT`` (model + ``BlipProcessor``), which
``data_annotation.py --captioner_model OUT`` loads like any BLIP, and ``OUT/train_info.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a file: its folder is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_annotation.describer import DEFAULT_IMAGE_PROMPT, PromptBook, context_crop  # noqa: E402
from vlm_annotation.label_readers import load_coco  # noqa: E402
from vlm_core.io_utils import InputError, write_json_atomic  # noqa: E402
from vlm_core.runtime import plural  # noqa: E402
from world.training import epoch_steps, shuffled_batches, train_for, warmup_cosine  # noqa: E402

INFO_FILE = "train_info.json"
# Words of the world's captions (anything else still tokenizes, letter by letter).
_WORDS = ("a an the of on in at photo picture lying litter empty ground glass plastic can paper bag bottle "
          "grass sand asphalt gravel water shore").split()


def object_caption(prompt: str, surface: str) -> str:
    return f"{prompt} the {surface}"


def image_caption(surface: str, n_objects: int) -> str:
    return f"{DEFAULT_IMAGE_PROMPT} litter on the {surface}" if n_objects else f"{DEFAULT_IMAGE_PROMPT} the {surface}"


def build_model(out: Path, seed: int, image_size: int = 64):
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,'-"))
    vocab = list(dict.fromkeys(specials + sorted(set(_WORDS)) + letters + ["##" + c for c in letters] + ["[DEC]"]))
    out.mkdir(parents=True, exist_ok=True)
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(vocab_file), bos_token="[DEC]", model_max_length=40)
    vocab_file.unlink()
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(seed)
    text = BlipTextConfig(vocab_size=len(vocab), hidden_size=64, encoder_hidden_size=64, intermediate_size=128,
                          projection_dim=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=40,
                          bos_token_id=ids("[DEC]"), eos_token_id=ids("[SEP]"), sep_token_id=ids("[SEP]"),
                          pad_token_id=ids("[PAD]"))
    vision = BlipVisionConfig(hidden_size=64, intermediate_size=128, projection_dim=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=image_size, patch_size=8)
    config = BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=64)
    model = BlipForConditionalGeneration(config)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                              tokenizer=tokenizer)
    return model, processor


def training_examples(world: Path, margin: float, rng: np.random.Generator, max_images: int | None,
                      jitter: float = 0.1) -> list[tuple[Image.Image, str, str]]:
    """(crop or image, prompt, target caption) for every object and every image of the training pool."""
    coco = load_coco(world / "train.json")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    book = PromptBook()
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images = coco["images"][:max_images] if max_images else coco["images"]
    examples = []
    for im in images:
        with Image.open(world / "train_images" / im["file_name"]) as f:
            image = f.convert("RGB")
        anns = by_image.get(im["id"], [])
        for a in anns:
            x, y, w, h = a["bbox"]
            # A detector's box is not exact: jitter each side by up to ``jitter`` of the box size.
            dx1, dy1, dx2, dy2 = rng.uniform(-jitter, jitter, 4) * np.array([w, h, w, h])
            box = [x + dx1, y + dy1, x + w + dx2, y + h + dy2]
            prompt = book.for_label(names[a["category_id"]])
            examples.append((context_crop(image, box, margin), prompt, object_caption(prompt, a["surface"])))
        examples.append((image, book.image, image_caption(im["surface"], len(anns))))
    return examples


def encode(processor, examples, prompt_lengths: dict[str, int]):
    """pixel_values, input_ids (first token = the decoder's BOS), labels (continuation + [SEP] only)."""
    tok = processor.tokenizer
    pixel_values = processor(images=[e[0] for e in examples], return_tensors="pt")["pixel_values"]
    enc = tok([e[2] for e in examples], padding="longest", return_tensors="pt")
    input_ids = enc["input_ids"].clone()
    input_ids[:, 0] = tok.convert_tokens_to_ids(tok.bos_token)
    labels = input_ids.clone()
    labels[enc["attention_mask"] == 0] = -100
    for i, e in enumerate(examples):
        # The prompt's tokens (without its [SEP]) are given at generation time: not supervised.
        labels[i, :prompt_lengths[e[1]] - 1] = -100
    return pixel_values, input_ids, enc["attention_mask"], labels


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", required=True, help="world folder written by world/make_world.py")
    p.add_argument("--out", required=True, help="folder to write the captioner (model + processor) into")
    p.add_argument("--minutes", type=float, default=2.0, help="wall-clock cap of the training loop (default 2)")
    p.add_argument("--epochs", type=int, default=6, help="most passes over the examples (default 6)")
    p.add_argument("--batch_size", type=int, default=64, help="examples per step (default 64)")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    p.add_argument("--crop_margin", type=float, default=0.5,
                   help="context around each box, as data_annotation.py --crop_margin (default 0.5)")
    p.add_argument("--max_images", type=int, default=None, help="use only the first N training scenes")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.epochs < 1 or args.batch_size < 1 or args.learning_rate <= 0 or args.crop_margin < 0:
        p.error("--minutes, --epochs, --batch_size, --learning_rate must be positive, --crop_margin >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch

    out = Path(args.out)
    rng = np.random.default_rng(args.seed)
    try:
        examples = training_examples(Path(args.world), args.crop_margin, rng, args.max_images)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, processor = build_model(out, args.seed)
    lengths = {p: len(processor.tokenizer(p)["input_ids"]) for p in {e[1] for e in examples}}
    pixel_values, input_ids, attention_mask, labels = encode(processor, examples, lengths)
    n = len(examples)
    steps_per_epoch = epoch_steps(n, args.batch_size, drop_last=False)
    full_plan = steps_per_epoch * args.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    torch.manual_seed(args.seed)

    def loss_of(idx):  # the batch's images (all flipped, half the time) through the model's own loss
        idx = torch.from_numpy(idx)
        pv = pixel_values[idx]
        if rng.random() < 0.5:
            pv = pv.flip(-1)
        return model(pixel_values=pv, input_ids=input_ids[idx], attention_mask=attention_mask[idx],
                     labels=labels[idx]).loss

    run = train_for(model, loss_of, shuffled_batches(n, args.batch_size, args.epochs, rng, drop_last=False),
                    optimizer, minutes=args.minutes, max_steps=full_plan, start=start,
                    schedule=warmup_cosine(max(1, full_plan // 20)), replan_every=10, max_grad_norm=1.0,
                    log_every=20, epoch_size=steps_per_epoch, name="blip")
    step = run.steps
    curve = [{"step": h["step"], "loss": round(h["loss"], 4)} for h in run.history]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    seconds = time.perf_counter() - start
    write_json_atomic(out / INFO_FILE, {
        "model": "BlipForConditionalGeneration (tiny)", "trainer": "AdamW loop on the model's own loss",
        "command": " ".join([sys.argv[0]] + (argv or sys.argv[1:])), "seed": args.seed, "steps": step,
        "examples": n, "seconds": round(seconds, 1), "loss_curve": curve})
    print(f"trained BLIP for {plural(step, 'step')} on {plural(n, 'crop or image', 'crops and images')} "
          f"in {seconds:.1f}s -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
