"""Build tiny, offline, real-architecture models for the demo and the tests.

    python models/make_tiny_models.py --out models/tiny

writes, deterministically (seeded) and in seconds on a CPU:

    OUT/yolo.pt          YOLOv8n from Ultralytics' yaml, loadable with ``YOLO(path)``
    OUT/rtdetr/m, /p     RTDetrForObjectDetection and its RTDetrImageProcessor
    OUT/blip             BlipForConditionalGeneration + BlipProcessor
    OUT/llava            LlavaForConditionalGeneration (tiny CLIP vision + tiny Llama) +
                         LlavaProcessor with a byte-level BPE tokenizer trained here and
                         llava-1.5-hf's chat template

They load through the same classes as the real checkpoints, so every stage runs its
real loading and inference code on them. Both detectors share one class vocabulary and
their classification biases are calibrated on sample photos so that they emit a few
boxes at ``conf_threshold 0.3`` (a randomly initialised detector emits none).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from PIL import Image, ImageDraw

CLASSES = ["glass", "plastic", "can", "paper", "bottle"]
# llava-1.5-hf's chat template, verbatim.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr("
    "'type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Words the tiny tokenizers know: the toolkit's own prompts and answers plus common scene words.
_WORDS = (
    "a an the this that there is are of in on at to with and or no yes not it its here where what how many "
    "which one two three four five six seven eight nine ten object objects region image picture photo "
    "please provide short description for bounding box coordinate sentence describes answer word "
    "left right top bottom centre center middle above below next near beside under over behind front "
    "of relative small large medium big lying standing sitting table grass floor ground road street "
    "water sand wall shelf desk bag bin box tree sky person man woman bus car dog cat white black red "
    "green blue brown clear empty full old new sunny park room kitchen beach trash recycling "
    + " ".join(CLASSES) + " glasses plastics cans papers bottles"
).split()


def log(msg: str) -> None:
    print(msg, flush=True)


def sample_photos() -> list[Image.Image]:
    """Ordinary photos that ship with Ultralytics, plus one drawn scene (no download)."""
    from ultralytics.utils import ASSETS
    photos = [Image.open(ASSETS / name).convert("RGB") for name in ("bus.jpg", "zidane.jpg")]
    photos.append(draw_scene(0))
    return photos


def draw_scene(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A simple synthetic scene: sky, grass and a few bottle/can-like shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, (135, 190, 235))
    draw = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.35, 0.55))
    draw.rectangle([0, horizon, w, h], fill=(60, 140 + int(rng.integers(0, 40)), 50))
    for _ in range(int(rng.integers(2, 5))):
        bw, bh = int(rng.integers(20, 60)), int(rng.integers(40, 120))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(horizon - bh // 2, h - bh))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            draw.rectangle([x, y, x + bw, y + bh], fill=colour, outline=(20, 20, 20))
        else:
            draw.ellipse([x, y, x + bw, y + bh], fill=colour, outline=(20, 20, 20))
    return img


def _bias_for(logits_per_image: list[np.ndarray], k: int, target_prob: float = 0.6) -> float:
    """Bias that lifts at least ``k`` logits of every calibration image above ``target_prob``."""
    kth = [np.sort(l.ravel())[::-1][min(k, l.size) - 1] for l in logits_per_image]
    return float(np.log(target_prob / (1 - target_prob)) - min(kth))


# --------------------------------------------------------------------------- YOLO
def build_yolo(out: Path, photos: list[Image.Image], seed: int, imgsz: int = 320) -> Path:
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG_DICT

    torch.manual_seed(seed)
    model = DetectionModel("yolov8n.yaml", nc=len(CLASSES), verbose=False)
    model.names = dict(enumerate(CLASSES))
    batch = torch.stack([torch.from_numpy(np.asarray(p.resize((imgsz, imgsz)), dtype=np.float32) / 255.0)
                         .permute(2, 0, 1) for p in photos])
    with torch.no_grad():
        # Default init makes activations vanish with depth (every photo looks alike to the
        # head): re-estimate the BatchNorm statistics on the photos, as a trained net has them.
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.momentum = None
        model.train()
        model(batch)
        model.eval()
        head = model.model[-1]
        # Only the coarsest level (stride 32) fires, with boxes about 4 strides wide, so a
        # photo gets a handful of boxes rather than hundreds.
        for level in range(len(head.cv2)):
            box_conv, cls_conv = head.cv2[level][-1], head.cv3[level][-1]
            box_conv.weight.mul_(0.05)
            bins = torch.full((head.reg_max,), -4.0)
            bins[2] = 4.0
            box_conv.bias.copy_(bins.repeat(4))
            cls_conv.bias.fill_(-30.0)
        cls_conv = head.cv3[-1][-1]
        cls_conv.weight.mul_(20.0)
        cls_conv.bias.zero_()
    ckpt = {"model": model, "ema": None, "optimizer": None, "epoch": -1,
            "train_args": {**DEFAULT_CFG_DICT, "imgsz": imgsz, "task": "detect"},
            "date": "2026-01-01", "version": "tiny"}
    path = out / "yolo.pt"
    torch.save(ckpt, path)
    # Calibrate through Ultralytics' own predictor (its letterboxing decides what the head sees).
    yolo = YOLO(str(path))
    captured = []
    conv = yolo.model.model[-1].cv3[-1][-1]
    hook = conv.register_forward_hook(lambda m, i, o: captured.append(o.detach().float().numpy()))
    for photo in photos[:2]:  # the two ordinary photos
        yolo.predict(photo, imgsz=imgsz, conf=0.99, verbose=False)
    hook.remove()
    with torch.no_grad():
        cls_conv.bias.fill_(_bias_for(captured, k=3))
    torch.save(ckpt, path)
    return path


# --------------------------------------------------------------------------- RT-DETR
def build_rtdetr(out: Path, photos: list[Image.Image], seed: int, size: int = 320) -> tuple[Path, Path]:
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    torch.manual_seed(seed)
    backbone = RTDetrResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    config = RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=[32, 64, 128], encoder_hidden_dim=32,
        encoder_ffn_dim=64, encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32],
        decoder_ffn_dim=64, decoder_attention_heads=2, decoder_layers=1, num_queries=8,
        num_denoising=0, anchor_image_size=None, id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)})
    model = RTDetrForObjectDetection(config).eval()
    processor = RTDetrImageProcessor(size={"height": size, "width": size})
    with torch.no_grad():
        logits = []
        for photo in photos:
            inputs = processor(images=photo, return_tensors="pt")
            logits.append(model(**inputs).logits[0].numpy())
        # Spread the class scores (a random head gives every query nearly the same score),
        # then lift the top few of every photo above the threshold.
        head = model.model.decoder.class_embed[-1]
        head.weight.mul_(10.0)
        logits = [(l - head.bias.numpy()) * 10.0 + head.bias.numpy() for l in logits]
        head.bias.add_(_bias_for(logits, k=3))
    m_dir, p_dir = out / "rtdetr" / "m", out / "rtdetr" / "p"
    model.save_pretrained(m_dir)
    processor.save_pretrained(p_dir)
    return m_dir, p_dir


# --------------------------------------------------------------------------- BLIP
def build_blip(out: Path, seed: int) -> Path:
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
    letters = sorted(set("".join(_WORDS)) | set("0123456789.,'"))
    vocab = specials + sorted(set(_WORDS)) + letters + ["##" + c for c in letters] + ["[DEC]"]
    vocab = list(dict.fromkeys(vocab))
    blip_dir = out / "blip"
    blip_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = blip_dir / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(vocab_file), bos_token="[DEC]", model_max_length=64)
    vocab_file.unlink()
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(seed)
    text = BlipTextConfig(vocab_size=len(vocab), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                          projection_dim=32, num_hidden_layers=2, num_attention_heads=2,
                          max_position_embeddings=64, bos_token_id=ids("[DEC]"), eos_token_id=ids("[SEP]"),
                          sep_token_id=ids("[SEP]"), pad_token_id=ids("[PAD]"))
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
                              num_attention_heads=2, image_size=64, patch_size=16)
    config = BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 64, "width": 64}),
                              tokenizer=tokenizer)
    model.save_pretrained(blip_dir)
    processor.save_pretrained(blip_dir)
    return blip_dir


# --------------------------------------------------------------------------- LLaVA
def _llava_corpus() -> list[str]:
    import random
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from vlm_annotation import prompts
    rng = random.Random(0)
    lines = [" ".join(rng.sample(_WORDS, 8)) for _ in range(400)]
    lines += [f"[{rng.random():.2f}, {rng.random():.2f}, {rng.random():.2f}, {rng.random():.2f}]"
              for _ in range(200)]
    lines += [prompts.count_answer(n) for n in range(12)]
    for c in CLASSES:
        lines += [prompts.COUNT_CLASS.format(plural=prompts.plural(c)), prompts.EXISTS.format(label=c),
                  prompts.LOCATION.format(label=c), f"Here is {prompts.article(c)} {c}. The {c} is on the grass."]
    lines += [prompts.REGION_DESCRIPTION, prompts.GROUNDING, prompts.REGION_LABEL, prompts.COUNT,
              "USER: ASSISTANT:"]
    return lines


def build_tokenizer(vocab_size: int = 700):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_llava_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"},
                                   padding_side="left", model_max_length=2048)


def build_llava(out: Path, seed: int) -> Path:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tokenizer()
    image_size, patch = 32, 8
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
                              num_attention_heads=2, image_size=image_size, patch_size=patch)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                         image_token_index=image_token_id, image_seq_length=(image_size // patch) ** 2,
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        # At the default init (std 0.02) every logit is near 0: the output layer (which LoRA
        # does not adapt) could never make one answer token clearly win. A trained LM has
        # spread logits; give the tiny one that too.
        model.lm_head.weight.normal_(0.0, 0.3)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                               num_additional_image_tokens=1)
    llava_dir = out / "llava"
    model.save_pretrained(llava_dir)
    processor.save_pretrained(llava_dir)
    return llava_dir


def build_all(out: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Write every tiny model under ``out`` and return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    photos = sample_photos()
    paths = {"yolo": build_yolo(out, photos, seed)}
    paths["rtdetr_model"], paths["rtdetr_processor"] = build_rtdetr(out, photos, seed)
    paths["blip"] = build_blip(out, seed)
    paths["llava"] = build_llava(out, seed)
    (out / "tiny_models.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}, indent=2) + "\n")
    return paths


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the tiny models into")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even when OUT already holds the models")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if (out / "tiny_models.json").is_file() and not args.force:
        log(f"tiny models already in {out} (use --force to rebuild)")
        return 0
    if out.exists() and args.force:
        shutil.rmtree(out)
    start = time.perf_counter()
    paths = build_all(out, args.seed)
    log(f"built {len(paths) - 1} tiny models in {out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
