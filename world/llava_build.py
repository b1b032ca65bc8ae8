"""The world's small LLaVA: its sizes, its tokenizer built on the world's text, and the builder that writes it, with
the pretrained vision tower and language model copied in (``world/make_llava.py`` is the command;
``world/make_family.py`` builds the other families from the same parts)."""
from __future__ import annotations

import json
from pathlib import Path

from fixtures.tiny_models import LLAVA_CHAT_TEMPLATE
from vlm_core import prompts
from vlm_core.io_utils import write_json_atomic
from vlm_training.conversion import ImageBoxes, render_pair
from world.truth import truth_annotations

IMAGE_SIZE, PATCH = 64, 8
# Sizes of the default model, each a flag of its own (--vision_width 128, ...); heads are 32 wide.
SIZES = {"vision_width": 128, "vision_layers": 3, "text_width": 192, "text_layers": 3, "text_intermediate": 512,
         "image_size": IMAGE_SIZE, "patch": PATCH}
SIZE_HELP = {"vision_width": "CLIP vision tower width (MLP 4x)", "vision_layers": "CLIP vision tower layers",
             "text_width": "Llama width", "text_layers": "Llama layers", "text_intermediate": "Llama MLP width",
             "image_size": "image side in pixels", "patch": "patch side in pixels ((image_size/patch)^2 image tokens)"}


def world_corpus(coco: dict, max_images: int = 1500, seed: int = 42) -> list[str]:
    """Lines of the world's text: every question and answer of the ground truth, and the turn words.

    The Q&A pairs name boxes by placeholder (``<box:3>``); each is rendered as convert renders it for
    LLaVA-1.5 (``[0.27, 0.20, 0.67, 0.61]``), the text the model reads and writes, so the BPE learns
    the box numbers rather than the placeholders; and each question as visual box prompts word it too
    ("... the can in the red box")."""
    coco = dict(coco, images=coco["images"][:max_images])
    lines = ["USER: ASSISTANT:", "USER: <image>\n"]
    for i, rec in enumerate(truth_annotations(coco, seed)["images"]):
        boxes = ImageBoxes(rec)
        for j, qa in enumerate(rec["qa"]):
            for box_prompt in ("text", "visual"):  # the question as each --box_prompt words it
                question, answer = render_pair(rec, qa, "world ground truth", f"images[{i}].qa[{j}]", boxes, box_prompt)
                lines.append(f"USER: {question} ASSISTANT: {answer}")
    lines += [prompts.count_answer(n) for n in range(12)]
    return lines


def build_tokenizer(lines: list[str], vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    # Every digit a token of its own, as Llama's tokenizer splits numbers: the BPE merged some box numbers
    # ("27") and not others ("6", "7"), so the same value had two spellings and grounding had to learn both.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"},
                                   padding_side="left", model_max_length=1024)


def load_tower_weights(model, tower_dir: Path) -> dict:
    """Copy the pretrained vision tower of ``tower_dir`` (``pretrain_vision.py --tower_out``: a CLIPVisionModel,
    or a whole world LLaVA) into ``model``; ValueError when its sizes are not the model's. Returns what is
    known of its pretraining (``pretrain_info.json``, without the loss curve)."""
    from transformers import CLIPVisionModel, LlavaForConditionalGeneration

    config = json.loads((tower_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") == "llava":
        source = LlavaForConditionalGeneration.from_pretrained(tower_dir).model.vision_tower
    else:
        source = CLIPVisionModel.from_pretrained(tower_dir)
    keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "image_size", "patch_size")
    have = {k: getattr(source.config, k) for k in keys}
    want = {k: getattr(model.model.vision_tower.config, k) for k in keys}
    if have != want:
        raise ValueError(f"the tower in {tower_dir} is {have}, the model asks for {want}")
    model.model.vision_tower.load_state_dict(source.state_dict())
    info_file = tower_dir / "pretrain_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    return {k: v for k, v in info.items() if k != "loss_curve"}


def load_language_model(lm_dir: Path):
    """The pretrained language model of ``lm_dir`` (``pretrain_lm.py --lm_out``: a LlamaForCausalLM with its
    tokenizer, or a whole world LLaVA): (its config, its tokenizer, its decoder, its lm_head)."""
    from transformers import AutoTokenizer, LlamaForCausalLM, LlavaForConditionalGeneration

    config = json.loads((lm_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") == "llava":
        source = LlavaForConditionalGeneration.from_pretrained(lm_dir)
        decoder, head, text_config = source.model.language_model, source.lm_head, source.config.text_config
    else:
        source = LlamaForCausalLM.from_pretrained(lm_dir)
        decoder, head, text_config = source.model, source.lm_head, source.config
    return text_config, AutoTokenizer.from_pretrained(lm_dir), decoder, head


def build_llava(out: Path, coco: dict, seed: int = 0, vocab_size: int = 512, feature_strategy: str = "default",
                vision_tower_from: Path | None = None, language_model_from: Path | None = None, **sizes) -> Path:
    """Write the model and processor to ``out``; ``sizes`` overrides entries of :data:`SIZES`.

    ``feature_strategy`` is LLaVA's ``vision_feature_select_strategy``: "default" drops the tower's CLS
    token (LLaVA-1.5), "full" keeps it as one more image token. ``vision_tower_from``: a pretrained tower
    to start from; ``language_model_from``: a pretrained language model with its tokenizer (the world's
    BPE is then that one, not built again; the text sizes must match). What is not given stays random."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    unknown = set(sizes) - set(SIZES)
    if unknown:
        raise ValueError(f"unknown sizes: {sorted(unknown)}")
    z = SIZES | sizes
    image_size, patch = z["image_size"], z["patch"]
    lm_config = lm_decoder = lm_head = None
    if language_model_from:
        lm_config, tokenizer, lm_decoder, lm_head = load_language_model(Path(language_model_from))
    else:
        tokenizer = build_tokenizer(world_corpus(coco), vocab_size)
    torch.manual_seed(seed)
    vw, tw = z["vision_width"], z["text_width"]
    vision = CLIPVisionConfig(hidden_size=vw, intermediate_size=4 * vw, projection_dim=vw,
                              num_hidden_layers=z["vision_layers"], num_attention_heads=vw // 32,
                              image_size=image_size, patch_size=patch)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=tw, intermediate_size=z["text_intermediate"],
                       num_hidden_layers=z["text_layers"], num_attention_heads=tw // 32,
                       num_key_value_heads=tw // 32, max_position_embeddings=1024,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=(image_size // patch) ** 2 + (feature_strategy == "full"),
                         vision_feature_select_strategy=feature_strategy,
                         vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(config).eval()
    tower_info = load_tower_weights(model, Path(vision_tower_from)) if vision_tower_from else None
    lm_info = None
    if lm_decoder is not None:
        keys = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads")
        have = {k: getattr(lm_config, k) for k in keys}
        want = {k: getattr(model.config.text_config, k) for k in keys}
        if have != want:
            raise ValueError(f"the language model in {language_model_from} is {have}, the model asks for {want}")
        model.model.language_model.load_state_dict(lm_decoder.state_dict())
        model.lm_head.load_state_dict(lm_head.state_dict())
        info_file = Path(language_model_from) / "pretrain_info.json"
        info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
        lm_info = {k: v for k, v in info.items() if k != "loss_curve"}
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy=feature_strategy, chat_template=LLAVA_CHAT_TEMPLATE,
                               num_additional_image_tokens=1)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    write_json_atomic(out / "build_info.json", {"builder": "world/make_llava.py", "seed": seed,
                                                "parameters": n_params, "vocab_size": len(tokenizer), "sizes": z,
                                                "feature_strategy": feature_strategy,
                                                "vision_tower_from": str(vision_tower_from) if vision_tower_from
                                                else None, "vision_tower_pretraining": tower_info,
                                                "language_model_from": str(language_model_from) if language_model_from
                                                else None, "language_model_pretraining": lm_info})
    return out
