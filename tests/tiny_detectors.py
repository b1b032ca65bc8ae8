"""Tiny zero-shot detectors of the real classes, built offline for the tests: OWLv2 (a tiny CLIP text and
vision tower, a CLIP tokenizer) and Grounding DINO (a tiny ResNet backbone, a tiny BERT and its WordPiece
tokenizer). Random weights; each is calibrated so that it emits boxes on ordinary photos, as
fixtures/tiny_models.py calibrates RT-DETR.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fixtures.tiny_models import CLASSES, _bias_for

# The vocabulary both are prompted with in the tests (data_annotation.py --classes).
QUERIES = ["glass", "can", "paper"]


def _clip_tokenizer(max_length: int):
    """A character-level CLIP tokenizer (byte-level alphabet, every character also as a word end, no merges)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # The special tokens last, as in CLIP's vocabulary: OWL-ViT masks a query whose first token has id 0.
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[], model_max_length=max_length)


def _small(photos: list[Image.Image]) -> list[Image.Image]:
    """The calibration photos at about the size the tiny models see (their processors are slow on big ones)."""
    return [p.resize((128, round(128 * p.height / p.width))) for p in photos]


def build_owlv2(out: Path, photos: list[Image.Image], seed: int = 0) -> Path:
    """A tiny Owlv2ForObjectDetection + Owlv2Processor, in ``out/owlv2``."""
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
        Owlv2TextConfig,
        Owlv2VisionConfig,
    )

    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer(max_length=16)
    text = Owlv2TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = Owlv2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=64, patch_size=16)
    config = Owlv2Config(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)
    model = Owlv2ForObjectDetection(config).eval()
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                               tokenizer=tokenizer)
    head = model.class_head
    with torch.no_grad():
        # logits = (cosine similarity + shift) * scale: a constant scale of 11 (elu(10) + 1) spreads the
        # similarities, then the shift lifts the best few boxes of every photo above the threshold.
        head.logit_scale.weight.zero_()
        head.logit_scale.bias.fill_(10.0)
        head.logit_shift.weight.zero_()
        head.logit_shift.bias.zero_()
        logits = []
        for photo in _small(photos):
            inputs = processor(text=[QUERIES], images=photo, return_tensors="pt")
            logits.append(model(**inputs).logits[0].numpy())
        head.logit_shift.bias.fill_(_bias_for(logits, k=3) / 11.0)
    folder = out / "owlv2"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _bert_tokenizer(folder: Path):
    """A WordPiece BERT tokenizer whose words are the classes (one token each) and the prompt's '.'."""
    from transformers import BertTokenizer

    letters = sorted(set("".join(CLASSES)))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *CLASSES, *letters, *("##" + c for c in letters)]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizer(str(vocab_file), model_max_length=32)
    vocab_file.unlink()
    return tokenizer


def build_grounding_dino(out: Path, photos: list[Image.Image], seed: int = 0) -> Path:
    """A tiny GroundingDinoForObjectDetection + GroundingDinoProcessor, in ``out/grounding_dino``."""
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        ResNetConfig,
    )

    torch.manual_seed(seed)
    folder = out / "grounding_dino"
    tokenizer = _bert_tokenizer(folder)
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                            layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=32)
    config = GroundingDinoConfig(
        backbone_config=backbone.to_dict(), text_config=text.to_dict(), num_queries=8, encoder_layers=1,
        encoder_ffn_dim=64, encoder_attention_heads=2, decoder_layers=2, decoder_ffn_dim=64,
        decoder_attention_heads=2, d_model=32, num_feature_levels=3, encoder_n_points=2, decoder_n_points=2,
        max_text_len=32)
    model = GroundingDinoForObjectDetection(config).eval()
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=tokenizer)
    text_prompt = " ".join(f"{q}." for q in QUERIES)
    with torch.no_grad():
        # A box's logit for a token is the dot product of its decoder state with the token's text feature, with
        # no bias to lift: scale the text projection so that the best few boxes of every photo score about 0.6
        # on the class tokens (turned around when the best boxes point away from the text).
        best = []
        for photo in _small(photos):
            inputs = processor(images=photo, text=text_prompt, return_tensors="pt")
            ids = inputs["input_ids"][0].tolist()
            positions = [k for k, t in enumerate(ids) if tokenizer.convert_ids_to_tokens(t) in QUERIES]
            logits = model(**inputs).logits[0][:, positions]
            best.append(np.sort(logits.max(-1).values.numpy())[::-1])
        kth = min(b[2] for b in best)
        if kth <= 0:
            kth = -max(b[-3] for b in best)
            sign = -1.0
        else:
            sign = 1.0
        scale = sign * float(np.log(0.6 / 0.4)) / max(kth, 1e-6)
        model.model.text_projection.weight.mul_(scale)
        model.model.text_projection.bias.mul_(scale)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
