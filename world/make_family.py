"""Build a world VLM of any family the toolkit trains, at the world LLaVA's sizes (issue 26).

    python world/make_family.py --family qwen2_5_vl --world world_output/world --out world_output/families/qwen2_5_vl \
        --vision_tower_from world/models/tower --language_model_from world/models/lm

Each family's own model class, processor, chat template, image-token layout and box frame (vlm_core/families.py),
at the sizes that learn the world in minutes on a CPU: a vision tower 128 wide x 3 layers and a language model
192 wide x 3 layers (MLP 512), as ``world/llava_build.py`` builds LLaVA-1.5 (``--family llava`` is that script's
model, unchanged). ``world/families.sh`` (``make world-families``) trains each on one world run's annotations with
``train_vlm.py --base_model OUT``, exactly as a user trains the 7B checkpoints.

================  ==================================  ============================================================
family            vision tower (what it starts from)  language model (what it starts from)
================  ==================================  ============================================================
llava             CLIP, 64 px, patch 8 (the world's)  Llama (the world's)
vip_llava         CLIP, the same; features of its 3   Llama (the world's); ``###Human:`` template
                  layers concatenated, as ViP-LLaVA's
llava_next        CLIP, the same; anyres over 64 px   Mistral (the world's Llama weights: the same architecture)
                  tiles, base view + tile + newlines
llava_onevision   CLIP, the same (the hub's is        Qwen2 (the world's Llama weights, zero q/k/v biases: the
                  SigLIP; the family is its layout)   same function); ChatML template
qwen2_vl          Qwen2-VL's ViT, patch 14, merge 2   Qwen2-VL's M-RoPE Qwen2 (the world's Llama weights, zero
                  (its own, pretrained on the pool)   biases); ~64 image tokens (224x224 px and up)
qwen2_5_vl        Qwen2.5-VL's windowed ViT (its own) the same as Qwen2-VL's
qwen3_vl          Qwen3-VL's ViT, patch 16, merge 2,  Qwen3 (the world's Llama weights; its q/k norms start at 1,
                  DeepStack (its own)                 so it starts near, not at, the world's)
================  ==================================  ============================================================

A CLIP tower takes the committed pretrained one (``--vision_tower_from world/models/tower``, as every LLaVA family
starts from a pretrained CLIP); a Qwen tower is that family's own architecture, pretrained the same way on the same
pool by ``world/pretrain_vision.py`` (its heads on the merger's tokens, the ones the language model reads) and
committed as ``world/models/towers/<family>`` (``--vision_tower_from`` that folder); without one it starts random and
``families.sh`` trains it with the rest (``--train_vision_tower``). The language model takes the committed pretrained one (``--language_model_from``)
and its tokenizer; the family's own special tokens (Qwen's ``<|im_start|>``, ``<|box_start|>``, ...) are added to the
tokenizer, their embeddings started at the mean of the others. Without ``--language_model_from`` the language model is
random and the tokenizer is built from the world's text (``llava_build.py``'s BPE) plus the family's tokens.
That language model knows LLaVA-1.5's box numbers; ``--family_lm world/models/family_lms/<family>`` then loads over it
the same language model pretrained again on the same text in this family's frame and answer format
(``world/pretrain_lm.py`` on this family's world model), as each real family's language model was trained on its own.
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

from fixtures.tiny_models import (  # noqa: E402
    LLAVA_NEXT_CHAT_TEMPLATE,
    LLAVA_ONEVISION_CHAT_TEMPLATE,
    QWEN2_VL_CHAT_TEMPLATE,
    QWEN3_VL_CHAT_TEMPLATE,
    QWEN_SPECIAL_TOKENS,
    VIP_LLAVA_CHAT_TEMPLATE,
)
from vlm_annotation.label_readers import load_coco  # noqa: E402
from vlm_core.io_utils import InputError, write_json_atomic  # noqa: E402
from world import llava_build  # noqa: E402

FAMILY_NAMES = ("llava", "vip_llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
CLIP_FAMILIES = ("llava", "vip_llava", "llava_next", "llava_onevision")  # the others have their own vision towers
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# CLIP's normalisation (CLIPImageProcessor's defaults): the committed tower was pretrained with it.
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
# Qwen resize settings: the world's images (about 128 px) are scaled up to ~64 image tokens, the world LLaVA's count.
QWEN2_PIXELS = dict(min_pixels=224 * 224, max_pixels=256 * 256)        # factor 28: 8x8 tokens for a square
QWEN3_PIXELS = {"shortest_edge": 256 * 256, "longest_edge": 288 * 288}  # factor 32: 8x8 tokens for a square


def family_tokenizer(family: str, base):
    """The world tokenizer ``base`` (the pretrained language model's, or llava_build.py's BPE) with ``family``'s special
    tokens appended and its own end, padding and image tokens; ChatML families (Qwen, OneVision) write no BOS."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(base.backend_tokenizer.to_str())
    if family in QWEN_FAMILIES:
        specials = QWEN_SPECIAL_TOKENS
        kwargs = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
                      extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                            "vision_start_token": "<|vision_start|>",
                                            "vision_end_token": "<|vision_end|>"})
    elif family == "llava_onevision":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<video>"]
        kwargs = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
                      extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})
    else:  # the LLaVA families keep Llama's specials
        specials = []
        kwargs = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                      extra_special_tokens={"image_token": "<image>"})
    have = backend.get_vocab()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials if t not in have])
    if family in QWEN_FAMILIES or family == "llava_onevision":
        state = json.loads(backend.to_str())
        state["post_processor"] = None  # no BOS: Qwen's tokenizers have none
        backend = Tokenizer.from_str(json.dumps(state))
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="left", model_max_length=1024, **kwargs)


def transplant_language_model(model, decoder, head) -> int:
    """Copy a Llama ``decoder`` (its ``LlamaModel``) and ``head`` into ``model``'s language model and ``lm_head``,
    by parameter name. Rows of tokens the source lacks start at the mean of its embeddings; parameters the source
    lacks keep their initialisation, except q/k/v biases, set to zero (Qwen2 with zero biases is Llama). Returns
    the number of tensors copied whole or in part."""
    import torch

    source = {**{f"lm.{k}": v for k, v in decoder.state_dict().items()},
              **{f"head.{k}": v for k, v in head.state_dict().items()}}
    targets = {**{f"lm.{k}": v for k, v in model.model.language_model.state_dict().items()},
               **{f"head.{k}": v for k, v in model.lm_head.state_dict().items()}}
    copied = 0
    with torch.no_grad():
        for name, target in targets.items():
            src = source.get(name)
            if src is None:
                if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                    target.zero_()
                continue
            if src.shape == target.shape:
                target.copy_(src)
            elif src.dim() == 2 and src.shape[1] == target.shape[1] and src.shape[0] < target.shape[0]:
                target[:src.shape[0]] = src  # embeddings or lm_head of a larger vocabulary
                target[src.shape[0]:] = src.mean(0)
            else:
                raise ValueError(f"the language model's {name} is {tuple(src.shape)}, the model asks for "
                                 f"{tuple(target.shape)}")
            copied += 1
    # state_dict() tensors share storage with the parameters, so the copies above are the model's.
    return copied


def load_tower(model, family: str, tower_dir: Path) -> dict:
    """Copy the pretrained vision tower of ``tower_dir`` into ``model``: a CLIP tower (``world/models/tower``) for the
    CLIP families, the family's own tower (``pretrain_vision.py --tower_out`` on that family's world model, e.g.
    ``world/models/towers/qwen2_vl``) for a Qwen family. ValueError when it is another kind or size. Returns what is
    known of its pretraining (``pretrain_info.json`` without the loss curve)."""
    config = json.loads((tower_dir / "config.json").read_text(encoding="utf-8"))
    kind = config.get("model_type")
    if family in CLIP_FAMILIES:
        if kind not in ("clip_vision_model", "llava"):
            raise ValueError(f"the tower in {tower_dir} is a {kind}; {family}'s is CLIP (e.g. world/models/tower)")
        return llava_build.load_tower_weights(model, tower_dir)
    from safetensors.torch import load_file

    visual = model.model.visual
    if kind != visual.config.model_type:
        raise ValueError(f"the tower in {tower_dir} is a {kind}; {family}'s is a {visual.config.model_type} "
                         f"(pretrain_vision.py --tower_out on a world {family})")
    try:
        visual.load_state_dict(load_file(str(tower_dir / "model.safetensors")))
    except RuntimeError as e:  # another size: the first line names the tensors
        raise ValueError(f"the tower in {tower_dir} does not fit the world {family}: "
                         f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
    info_file = tower_dir / "pretrain_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    return {k: v for k, v in info.items() if k != "loss_curve"}


def _text_config(family: str, tokenizer, sizes: dict, rope_theta: float) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    tw = sizes["text_width"]
    text = dict(vocab_size=len(tokenizer), hidden_size=tw, intermediate_size=sizes["text_intermediate"],
                num_hidden_layers=sizes["text_layers"], num_attention_heads=tw // 32, num_key_value_heads=tw // 32,
                max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, rms_norm_eps=1e-6)
    if family in QWEN_FAMILIES or family == "llava_onevision":
        text["bos_token_id"] = None
        text["eos_token_id"] = ids("<|im_end|>")
    else:
        text["bos_token_id"] = tokenizer.bos_token_id
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    if family in ("qwen2_vl", "qwen2_5_vl"):
        rope["mrope_section"] = [4, 6, 6]  # time, height, width: the 16 frequencies of a 32-wide head
    elif family == "qwen3_vl":
        rope.update(mrope_section=[6, 5, 5], mrope_interleaved=True)
        text["head_dim"] = 32
    text["rope_parameters"] = rope
    return text


def _clip_config(sizes: dict):
    from transformers import CLIPVisionConfig

    vw = sizes["vision_width"]
    return CLIPVisionConfig(hidden_size=vw, intermediate_size=4 * vw, projection_dim=vw,
                            num_hidden_layers=sizes["vision_layers"], num_attention_heads=vw // 32,
                            image_size=sizes["image_size"], patch_size=sizes["patch"])


def _clip_processor(sizes: dict):
    from transformers import CLIPImageProcessor

    s = sizes["image_size"]
    return CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s})


def build_model(family: str, tokenizer, sizes: dict, rope_theta: float = 10000.0):
    """(model, processor) of ``family`` at ``sizes`` (llava_build.SIZES), random weights."""
    import transformers as tf

    text = _text_config(family, tokenizer, sizes, rope_theta)
    ids = tokenizer.convert_tokens_to_ids
    s, patch = sizes["image_size"], sizes["patch"]
    grid_tokens = (s // patch) ** 2
    if family == "vip_llava":
        # ViP-LLaVA concatenates several CLIP layers' features (five of 24 in the hub checkpoint); here all three.
        layers = list(range(-sizes["vision_layers"], 0))
        config = tf.VipLlavaConfig(vision_config=_clip_config(sizes).to_dict(), text_config=tf.LlamaConfig(**text).to_dict(),
                                   image_token_index=ids("<image>"), image_seq_length=grid_tokens,
                                   vision_feature_layers=layers)
        model = tf.VipLlavaForConditionalGeneration(config)
        processor = tf.LlavaProcessor(image_processor=_clip_processor(sizes), tokenizer=tokenizer, patch_size=patch,
                                      vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                      chat_template=VIP_LLAVA_CHAT_TEMPLATE)
    elif family == "llava_next":
        # One 64 px tile besides the base view: the anyres layout (base + tile + a newline per row) at the cost
        # of two views, not five.
        pinpoints = [[s, s]]
        config = tf.LlavaNextConfig(vision_config=_clip_config(sizes).to_dict(),
                                    text_config=tf.MistralConfig(**text, sliding_window=None).to_dict(),
                                    image_token_index=ids("<image>"), image_grid_pinpoints=pinpoints,
                                    vision_feature_select_strategy="default", vision_feature_layer=-1,
                                    image_seq_length=grid_tokens)
        model = tf.LlavaNextForConditionalGeneration(config)
        image_processor = tf.LlavaNextImageProcessor(size={"shortest_edge": s}, image_grid_pinpoints=pinpoints,
                                                     crop_size={"height": s, "width": s})
        processor = tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                          chat_template=LLAVA_NEXT_CHAT_TEMPLATE)
    elif family == "llava_onevision":
        pinpoints = [[s, s]]
        config = tf.LlavaOnevisionConfig(vision_config=_clip_config(sizes).to_dict(),
                                         text_config=tf.Qwen2Config(**text).to_dict(),
                                         image_token_index=ids("<image>"), video_token_index=ids("<video>"),
                                         image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default",
                                         vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9")
        model = tf.LlavaOnevisionForConditionalGeneration(config)
        pixels = dict(size={"height": s, "width": s}, image_mean=CLIP_MEAN, image_std=CLIP_STD)
        processor = tf.LlavaOnevisionProcessor(
            image_processor=tf.LlavaOnevisionImageProcessor(image_grid_pinpoints=pinpoints, **pixels),
            video_processor=tf.LlavaOnevisionVideoProcessor(**pixels), tokenizer=tokenizer,
            # the CLS token counts here and "default" drops it: 64 base tokens, as the model's features
            num_image_tokens=grid_tokens + 1, vision_feature_select_strategy="default",
            vision_aspect_ratio="anyres_max_9", chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE)
    elif family in QWEN_FAMILIES:
        vw, depth = sizes["vision_width"], sizes["vision_layers"]
        qwen_ids = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
        if family == "qwen2_vl":
            vision = dict(depth=depth, embed_dim=vw, hidden_size=sizes["text_width"], num_heads=vw // 32, mlp_ratio=4,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
            config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **qwen_ids)
            model = tf.Qwen2VLForConditionalGeneration(config)
        elif family == "qwen2_5_vl":
            vision = dict(depth=depth, hidden_size=vw, intermediate_size=4 * vw, num_heads=vw // 32, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                          fullatt_block_indexes=[depth - 1], out_hidden_size=sizes["text_width"])
            config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **qwen_ids)
            model = tf.Qwen2_5_VLForConditionalGeneration(config)
        else:
            vision = dict(depth=depth, hidden_size=vw, intermediate_size=4 * vw, num_heads=vw // 32, patch_size=16,
                          spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=sizes["text_width"],
                          num_position_embeddings=324, deepstack_visual_indexes=[depth - 2])
            config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, **qwen_ids)
            model = tf.Qwen3VLForConditionalGeneration(config)
        if family == "qwen3_vl":
            pixels = dict(size=QWEN3_PIXELS, image_mean=[0.5] * 3, image_std=[0.5] * 3)
            processor = tf.Qwen3VLProcessor(
                image_processor=tf.Qwen2VLImageProcessor(patch_size=16, merge_size=2, **pixels),
                video_processor=tf.Qwen3VLVideoProcessor(patch_size=16, merge_size=2, **pixels),
                tokenizer=tokenizer, chat_template=QWEN3_VL_CHAT_TEMPLATE)
        else:
            processor_class = tf.Qwen2VLProcessor if family == "qwen2_vl" else tf.Qwen2_5_VLProcessor
            processor = processor_class(
                image_processor=tf.Qwen2VLImageProcessor(patch_size=14, merge_size=2, **QWEN2_PIXELS),
                video_processor=tf.Qwen2VLVideoProcessor(patch_size=14, merge_size=2, **QWEN2_PIXELS),
                tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE)
    else:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILY_NAMES)}")
    return model.eval(), processor


def family_lm_record(folder: Path, family: str) -> dict:
    """The pretraining record of a ``--family_lm`` folder (its ``pretrain_info.json``); ValueError, in one line, when
    its language model was pretrained for another family's frame (or for none recorded)."""
    info_file = folder / "pretrain_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    if info.get("family") != family:
        raise ValueError(f"--family_lm {folder}: a language model pretrained for {info.get('family') or 'no family'}, "
                         f"not {family} (world/pretrain_lm.py --lm_out on a {family} world model writes one)")
    return info


def load_family_lm(model, family: str, folder: Path) -> dict:
    """Load the language model that ``world/pretrain_lm.py --lm_out`` wrote for ``family``'s world model (its
    ``model.language_model.*`` and ``lm_head.*`` tensors, by name) over ``model``'s; its pretraining record.
    ValueError for another family's (:func:`family_lm_record`), or tensors that do not fit (another tokenizer or
    sizes)."""
    from safetensors.torch import load_file

    info = family_lm_record(folder, family)
    weights = load_file(str(folder / "model.safetensors"))
    own = model.state_dict()
    for name, tensor in weights.items():
        if name not in own or own[name].shape != tensor.shape:
            raise ValueError(f"--family_lm {folder}: its {name} {tuple(tensor.shape)} does not fit this model "
                             f"({tuple(own[name].shape) if name in own else 'no such tensor'})")
    missing = [n for n in own if n.startswith(FAMILY_LM_PREFIXES) and n not in weights]
    if missing:
        raise ValueError(f"--family_lm {folder}: {len(missing)} language-model tensors missing, e.g. {missing[0]}")
    model.load_state_dict(weights, strict=False)
    return {k: v for k, v in info.items() if k != "loss_curve"}


# The tensors of a family's language model (the decoder and its head), as pretrain_lm.py --lm_out saves them.
FAMILY_LM_PREFIXES = ("model.language_model.", "lm_head.")


def build_family(family: str, out: Path, coco: dict, seed: int = 0, vision_tower_from: Path | None = None,
                 language_model_from: Path | None = None, family_lm: Path | None = None) -> Path:
    """Write ``family``'s world model and processor to ``out`` (see the module docstring); returns ``out``."""
    import torch

    if family == "llava":
        if family_lm:
            raise ValueError("--family_lm: LLaVA-1.5's language model is --language_model_from's (its own frame)")
        return llava_build.build_llava(out, coco, seed, vision_tower_from=vision_tower_from,
                                      language_model_from=language_model_from)
    sizes = dict(llava_build.SIZES)
    decoder = head = None
    rope_theta = 10000.0
    if language_model_from:
        lm_config, base_tokenizer, decoder, head = llava_build.load_language_model(Path(language_model_from))
        keys = {"hidden_size": "text_width", "num_hidden_layers": "text_layers", "intermediate_size": "text_intermediate"}
        for key, size in keys.items():
            if getattr(lm_config, key) != sizes[size]:
                raise ValueError(f"the language model in {language_model_from} has {key} {getattr(lm_config, key)}, "
                                 f"the world's sizes ask for {sizes[size]}")
        rope_theta = float((getattr(lm_config, "rope_parameters", None) or {}).get("rope_theta", 10000.0))
    else:
        base_tokenizer = llava_build.build_tokenizer(llava_build.world_corpus(coco))
    tokenizer = family_tokenizer(family, base_tokenizer)
    torch.manual_seed(seed)
    model, processor = build_model(family, tokenizer, sizes, rope_theta)
    tower_info = load_tower(model, family, Path(vision_tower_from)) if vision_tower_from else None
    copied = transplant_language_model(model, decoder, head) if decoder is not None else 0
    # The language model pretrained again in this family's own box frame and answer format, over the transplant.
    family_lm_info = load_family_lm(model, family, Path(family_lm)) if family_lm else None
    if family in QWEN_FAMILIES or family == "llava_onevision":
        ids = tokenizer.convert_tokens_to_ids
        # Qwen's instruct checkpoints stop at <|im_end|> or <|endoftext|>.
        model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
        model.generation_config.pad_token_id = ids("<|endoftext|>")
        model.generation_config.bos_token_id = None
    else:
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            setattr(model.generation_config, name, getattr(tokenizer, name))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    info_file = Path(language_model_from or "") / "pretrain_info.json"
    lm_info = json.loads(info_file.read_text(encoding="utf-8")) if language_model_from and info_file.is_file() else None
    write_json_atomic(out / "build_info.json", {
        "builder": "world/make_family.py", "family": family, "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer), "sizes": sizes,
        "vision_tower_from": str(vision_tower_from) if vision_tower_from else None,
        "vision_tower_pretraining": tower_info,
        "language_model_from": str(language_model_from) if language_model_from else None,
        "language_model_tensors_copied": copied,
        "language_model_pretraining": {k: v for k, v in (lm_info or {}).items() if k != "loss_curve"} or None,
        "family_lm": str(family_lm) if family_lm else None, "family_lm_pretraining": family_lm_info})
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True, choices=FAMILY_NAMES, help="the model family to build")
    p.add_argument("--world", required=True, help="world folder written by world/make_world.py (its train.json)")
    p.add_argument("--out", required=True, help="folder to write the model and processor into")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--vision_tower_from", default=None,
                   help="pretrained vision tower: CLIP (world/models/tower) for llava, vip_llava, llava_next and "
                   "llava_onevision; the family's own for a Qwen family (world/models/towers/<family>, written by "
                   "pretrain_vision.py --tower_out on that family's world model); default: random")
    p.add_argument("--language_model_from", default=None,
                   help="pretrained world language model and its tokenizer (world/models/lm), copied into the "
                   "family's language model (default: random, with a BPE built here)")
    p.add_argument("--family_lm", default=None,
                   help="that language model pretrained again in this family's box frame and answer format "
                   "(world/models/family_lms/<family>: world/pretrain_lm.py --lm_out on this family's world model "
                   "built with --language_model_from), loaded over it; not for llava (default: none)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    train_json = Path(args.world) / "train.json"
    if not train_json.is_file():
        print(f"error: --world {args.world}: no train.json there (a folder written by world/make_world.py)",
              file=sys.stderr)
        return 2
    for flag, needed in (("vision_tower_from", "config.json"), ("language_model_from", "config.json"),
                         ("family_lm", "model.safetensors")):
        folder = getattr(args, flag)
        if folder and not (Path(folder) / needed).is_file():
            print(f"error: --{flag} {folder}: no {needed} there", file=sys.stderr)
            return 2
    if args.family_lm:  # before anything loads: a language model pretrained for another family's frame
        try:
            family_lm_record(Path(args.family_lm), args.family)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    tower = args.vision_tower_from
    try:
        coco = load_coco(train_json)
        out = build_family(args.family, Path(args.out), coco, args.seed, tower, args.language_model_from,
                           args.family_lm)
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = json.loads((out / "build_info.json").read_text(encoding="utf-8"))
    started = [what for what, flag in (("vision tower", tower), ("language model", args.language_model_from),
                                       ("language model in its own frame", args.family_lm)) if flag]
    print(f"built the world {args.family} ({info['parameters']:,} parameters, {info['vocab_size']} tokens"
          f"{', pretrained ' + ' and '.join(started) if started else ''}) in {time.perf_counter() - start:.1f}s "
          f"-> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
