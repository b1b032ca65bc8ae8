"""Build tiny, offline, real-architecture models for the demo and the tests.

    python models/make_tiny_models.py --out models/tiny

writes, deterministically (seeded) and in seconds on a CPU:

    OUT/yolo.pt          YOLOv8n from Ultralytics' yaml, loadable with ``YOLO(path)``
    OUT/rtdetr/m, /p     RTDetrForObjectDetection and its RTDetrImageProcessor
    OUT/blip             BlipForConditionalGeneration + BlipProcessor
    OUT/llava            LlavaForConditionalGeneration (tiny CLIP vision + tiny Llama) +
                         LlavaProcessor with a byte-level BPE tokenizer trained here and
                         llava-1.5-hf's chat template
    OUT/llava_next       LlavaNextForConditionalGeneration (tiny CLIP + tiny Mistral, anyres) + LlavaNextProcessor
    OUT/llava_onevision  LlavaOnevisionForConditionalGeneration (tiny SigLIP + tiny Qwen2, anyres_max_9)
    OUT/qwen2_vl         Qwen2VLForConditionalGeneration + Qwen2VLProcessor (smart_resize factor 28)
    OUT/qwen2_5_vl       Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor (window attention, factor 28)
    OUT/qwen3_vl         Qwen3VLForConditionalGeneration + Qwen3VLProcessor (DeepStack, factor 32)
                         each with a BPE tokenizer holding the family's special tokens and its
                         official chat template (see vlm_training/families.py)

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


def build_tokenizer(vocab_size: int = 700, corpus: list[str] | None = None, model_max_length: int = 2048):
    """A tiny LLaVA's byte-level BPE tokenizer (Llama's special tokens), trained on ``corpus``
    (default :func:`_llava_corpus`; models/make_world_llava.py gives the world's sentences)."""
    return _bpe_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], vocab_size, "<s>",
                          corpus=_llava_corpus() if corpus is None else corpus, model_max_length=model_max_length,
                          bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                          extra_special_tokens={"image_token": "<image>"})


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


# --------------------------------------------------------------------------- other VLM families
# Chat templates, verbatim from the official checkpoints (see vlm_training/families.py for sources).
# llava-hf/llava-v1.6-mistral-7b-hf chat_template.json.
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + message['content'][0]"
    "['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first "
    "#}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '</s> '}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}"
)
# Qwen/Qwen2-VL-2B-Instruct tokenizer_config.json (Qwen2.5-VL-Instruct ships the same template).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] "
    "== 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = image_count.value "
    "+ 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = "
    "video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|>"
    "<|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL-Instruct's template without its tool-calling branches (which these tests never use):
# no default system prompt, images as <|vision_start|><|image_pad|><|vision_end|>.
QWEN3_VL_CHAT_TEMPLATE = "\n".join([
    "{%- set image_count = namespace(value=0) %}",
    "{%- set video_count = namespace(value=0) %}",
    "{%- macro render_content(content, do_vision_count) %}",
    "    {%- if content is string %}",
    "        {{- content }}",
    "    {%- else %}",
    "        {%- for item in content %}",
    "            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}",
    "                {%- if do_vision_count %}",
    "                    {%- set image_count.value = image_count.value + 1 %}",
    "                {%- endif %}",
    "                {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}",
    "                <|vision_start|><|image_pad|><|vision_end|>",
    "            {%- elif 'video' in item or item.type == 'video' %}",
    "                {%- if do_vision_count %}",
    "                    {%- set video_count.value = video_count.value + 1 %}",
    "                {%- endif %}",
    "                {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}",
    "                <|vision_start|><|video_pad|><|vision_end|>",
    "            {%- elif 'text' in item %}",
    "                {{- item.text }}",
    "            {%- endif %}",
    "        {%- endfor %}",
    "    {%- endif %}",
    "{%- endmacro %}",
    "{%- if messages[0].role == 'system' %}",
    "    {{- '<|im_start|>system\\n' + render_content(messages[0].content, false) + '<|im_end|>\\n' }}",
    "{%- endif %}",
    "{%- for message in messages %}",
    "    {%- set content = render_content(message.content, True) %}",
    "    {%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}",
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}",
    "    {%- elif message.role == 'assistant' %}",
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}",
    "    {%- endif %}",
    "{%- endfor %}",
    "{%- if add_generation_prompt %}",
    "    {{- '<|im_start|>assistant\\n' }}",
    "{%- endif %}",
])
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                       "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                       "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
FAMILY_MODELS = ("llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")


def _family_corpus() -> list[str]:
    """The LLaVA corpus plus every family's box notation and chat scaffolding."""
    import random
    rng = random.Random(1)
    lines = _llava_corpus()
    for _ in range(150):
        a, b, c, d = sorted(rng.randrange(0, 1001) for _ in range(4))
        label = rng.choice(CLASSES)
        lines += [f"<|box_start|>({a},{b}),({c},{d})<|box_end|>", f"[{a}, {b}, {c}, {d}]",
                  f'{{"bbox_2d": [{a}, {b}, {c}, {d}], "label": "{label}"}}']
    lines += ["[INST] What is this? [/INST] A glass.", "system\nYou are a helpful assistant.", "user\n",
              "assistant\n"]
    return lines


def _bpe_tokenizer(specials: list[str], vocab_size: int, bos: str | None, corpus: list[str] | None = None,
                   model_max_length: int = 4096, **kwargs):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_family_corpus() if corpus is None else corpus, trainer=trainer)
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", model_max_length=model_max_length,
                                   **kwargs)


def _spread_lm_head(model) -> None:
    # As for the tiny LLaVA: spread logits so LoRA (which leaves lm_head alone) can make an answer win.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.3)


def build_llava_next(out: Path, seed: int) -> Path:
    """LLaVA-NeXT: tiny CLIP vision + tiny Mistral, anyres grid of 32 px tiles, llava-v1.6-mistral's template."""
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        MistralConfig,
    )

    tokenizer = _bpe_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], 800, bos="<s>", bos_token="<s>",
                               eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                               extra_special_tokens={"image_token": "<image>"})
    image_size, patch = 32, 8
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
                              num_attention_heads=2, image_size=image_size, patch_size=patch)
    text = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         sliding_window=None, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    config = LlavaNextConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default",
                             vision_feature_layer=-2, image_seq_length=(image_size // patch) ** 2)
    model = LlavaNextForConditionalGeneration(config).eval()
    _spread_lm_head(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": image_size}, image_grid_pinpoints=pinpoints,
                                              crop_size={"height": image_size, "width": image_size})
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_NEXT_CHAT_TEMPLATE)
    folder = out / "llava_next"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _qwen_tokenizer():
    return _bpe_tokenizer(QWEN_SPECIAL_TOKENS, 900, bos=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                                "vision_start_token": "<|vision_start|>",
                                                "vision_end_token": "<|vision_end|>"})


def _qwen_text(tokenizer, **extra) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    # head_dim 16: the three M-RoPE sections (time, height, width) split its 8 frequencies.
    return dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                tie_word_embeddings=False, **extra)


def _qwen_finish(model, processor, tokenizer, folder: Path) -> Path:
    ids = tokenizer.convert_tokens_to_ids
    _spread_lm_head(model)
    # Qwen's instruct checkpoints stop at <|im_end|> or <|endoftext|>.
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.generation_config.bos_token_id = None
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _qwen_token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def _qwen2_rope() -> dict:
    """Qwen2-VL's and Qwen2.5-VL's M-RoPE: sections (time, height, width) of the 8 frequencies."""
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}


def _qwen2_processor(processor_class, tokenizer):
    """Qwen2-VL's and Qwen2.5-VL's processor: patch 14, merge 2, images resized to 56x56..112x112 pixels."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor
    sizes = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    return processor_class(image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, **sizes),
                           video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2, **sizes),
                           tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE)


def build_qwen2_vl(out: Path, seed: int) -> Path:
    """Qwen2-VL: patch 14, merge 2 (smart_resize factor 28), at most 16 image tokens (112x112 px)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tokenizer = _qwen_tokenizer()
    torch.manual_seed(seed)
    text = _qwen_text(tokenizer, rope_parameters=_qwen2_rope())
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(tokenizer))
    model = Qwen2VLForConditionalGeneration(config).eval()
    return _qwen_finish(model, _qwen2_processor(Qwen2VLProcessor, tokenizer), tokenizer, out / "qwen2_vl")


def build_qwen2_5_vl(out: Path, seed: int) -> Path:
    """Qwen2.5-VL: window attention in the vision tower, same resize rule as Qwen2-VL."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    tokenizer = _qwen_tokenizer()
    torch.manual_seed(seed)
    text = _qwen_text(tokenizer, rope_parameters=_qwen2_rope())
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1], out_hidden_size=64)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(tokenizer))
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return _qwen_finish(model, _qwen2_processor(Qwen2_5_VLProcessor, tokenizer), tokenizer, out / "qwen2_5_vl")


def build_qwen3_vl(out: Path, seed: int) -> Path:
    """Qwen3-VL: patch 16, merge 2 (factor 32), DeepStack features from vision block 0, interleaved M-RoPE."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = _qwen_tokenizer()
    torch.manual_seed(seed)
    text = _qwen_text(tokenizer, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                               "mrope_section": [2, 3, 3],
                                                               "mrope_interleaved": True})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(tokenizer))
    model = Qwen3VLForConditionalGeneration(config).eval()
    sizes = dict(size={"shortest_edge": 64 * 64, "longest_edge": 128 * 128}, image_mean=[0.5] * 3,
                 image_std=[0.5] * 3)
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, **sizes),
                                 video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, **sizes),
                                 tokenizer=tokenizer, chat_template=QWEN3_VL_CHAT_TEMPLATE)
    return _qwen_finish(model, processor, tokenizer, out / "qwen3_vl")


# llava-hf/llava-onevision-qwen2-0.5b-ov-hf's template, as transformers' own processor tests carry it
# (tests/models/llava_onevision/test_processing_llava_onevision.py).
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content "
    "in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_llava_onevision(out: Path, seed: int) -> Path:
    """LLaVA-OneVision: tiny SigLIP vision + tiny Qwen2, anyres_max_9 over 32 px tiles, ChatML-style template."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = _bpe_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"], 800, bos=None,
                               eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})
    image_size, patch = 32, 8
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=image_size, patch_size=patch)
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                       tie_word_embeddings=False)
    config = LlavaOnevisionConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                  image_token_index=ids("<image>"), video_token_index=ids("<video>"),
                                  image_grid_pinpoints=pinpoints, vision_feature_select_strategy="full",
                                  vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9")
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    _spread_lm_head(model)
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.generation_config.bos_token_id = None
    sizes = dict(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(image_grid_pinpoints=pinpoints, **sizes),
        video_processor=LlavaOnevisionVideoProcessor(**sizes), tokenizer=tokenizer,
        num_image_tokens=(image_size // patch) ** 2, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE)
    folder = out / "llava_onevision"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


FAMILY_BUILDERS = {"llava_next": build_llava_next, "qwen2_vl": build_qwen2_vl, "qwen2_5_vl": build_qwen2_5_vl,
                   "qwen3_vl": build_qwen3_vl, "llava_onevision": build_llava_onevision}


def build_all(out: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """Write every tiny model under ``out`` and return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    photos = sample_photos()
    paths = {"yolo": build_yolo(out, photos, seed)}
    paths["rtdetr_model"], paths["rtdetr_processor"] = build_rtdetr(out, photos, seed)
    paths["blip"] = build_blip(out, seed)
    paths["llava"] = build_llava(out, seed)
    for name, build in FAMILY_BUILDERS.items():
        paths[name] = build(out, seed)
    (out / "tiny_models.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}, indent=2) + "\n")
    return paths


def _complete(out: Path) -> bool:
    """True when ``out`` holds every model this version builds (an older build lacks the families)."""
    try:
        built = json.loads((out / "tiny_models.json").read_text())
    except (OSError, ValueError):
        return False
    names = ("yolo", "rtdetr_model", "rtdetr_processor", "blip", "llava", *FAMILY_MODELS)
    return isinstance(built, dict) and all(isinstance(built.get(n), str) and Path(built[n]).exists() for n in names)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the tiny models into")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even when OUT already holds the models")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if _complete(out) and not args.force:
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
