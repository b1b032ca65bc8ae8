"""Training examples for the VLM families beyond LLaVA-1.5 (LLaVA-NeXT/OneVision, ViP-LLaVA, Qwen2/2.5/3-VL).

:class:`FamilyLayout` is :class:`vlm_training.llava_data.TokenLayout` for a model whose chat
template, end-of-turn token and image-token count differ from LLaVA-1.5's:

- the conversation is laid out by the processor's own chat template
  (:func:`vlm_core.families.conversation_segments`): answers are supervised through the
  family's end-of-turn token (``<|im_end|>`` for Qwen and OneVision, ``</s>`` for LLaVA-NeXT and ViP-LLaVA);
- an image is prepared by the family's frame as inference prepares it (``BoxFrame.prepare_image``:
  padded to a square for ViP-LLaVA, whose frame is LLaVA-1.5's; as it is for the others, whose processor
  handles any aspect ratio and whose box frame is defined on the original image), and takes as many image
  tokens as the processor gives an image of its size (:func:`vlm_core.families.image_token_count`), known
  from the record's width and height before any pixel is read;
- the processor's per-image inputs (Qwen's ``image_grid_thw``, LLaVA-NeXT's ``image_sizes``)
  travel with the pixels; :func:`vlm_training.llava_data.collate_images` batches them.
"""
from __future__ import annotations

import dataclasses

import torch
from PIL import Image

from vlm_core import families
from vlm_core.io_utils import InputError
from vlm_core.llava_format import IMAGE_PLACEHOLDER
from vlm_core.prompts import PromptFormat, resolve_system_prompt
from vlm_training.llava_data import TokenLayout, _adds_bos, tokenize_segments


def record_turns(record: dict) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs of a LLaVA record, the image placeholder taken off the first question."""
    conv = record["conversations"]
    turns = []
    for k in range(0, len(conv) - 1, 2):
        question = conv[k]["value"]
        if k == 0:
            question = question[len(IMAGE_PLACEHOLDER):]
        turns.append((question, conv[k + 1]["value"]))
    return turns


class FamilyLayout(TokenLayout):
    """The token layout of a non-LLaVA-1.5 family, measured on its processor like TokenLayout's."""

    def __init__(self, processor, fmt: PromptFormat, family: families.Family):
        tok = processor.tokenizer
        self.processor, self.family, self.tokenizer, self.fmt = processor, family, tok, fmt
        self.family_name = family.name
        self.image_token = processor.image_token
        self.image_token_id = tok.convert_tokens_to_ids(self.image_token)
        self.bos = [tok.bos_token_id] if _adds_bos(tok) else []
        # "EOS" in TokenLayout's sense: the token every supervised answer ends with.
        self.eos_token = families.end_of_turn(family, tok)
        self.eos_token_id = tok.convert_tokens_to_ids(self.eos_token)
        if self.eos_token_id is None or self.eos_token_id == tok.unk_token_id:
            raise InputError(f"the base model's tokenizer does not know its end-of-turn token {self.eos_token}")
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.image_processor = processor.image_processor
        self.fill = tuple(float(v) for v in getattr(self.image_processor, "image_mean", None) or (0.0, 0.0, 0.0))
        self.system = fmt.system_prompt or None
        # As TokenLayout does: one real processor call proves that our piecewise tokenization with the
        # image token expanded by image_token_count() is exactly the processor's input_ids.
        width, height = 40, 30
        prompt = families.generation_prompt(processor, "How many objects are there?", system=self.system)
        probe = processor(text=[prompt], images=[Image.new("RGB", (width, height))], return_tensors="pt")
        ref = probe["input_ids"][0].tolist()
        self.num_image_tokens = families.image_token_count(processor, width, height)
        ours = self.expand(self.bos + tokenize_segments(tok, [(prompt, False)])[0], self.num_image_tokens)
        if ref.count(self.image_token_id) != self.num_image_tokens or ours != ref:
            raise RuntimeError("tokenizing a prompt piecewise does not reproduce the processor's input_ids "
                               f"(ours {ours[:40]}..., processor {ref[:40]}...)")
        self.longest_token_chars = max(len(t) for t in tok.get_vocab())

    def segments(self, record: dict, char_budget: int | None = None) -> list[tuple[str, bool]]:
        turns, used, kept = record_turns(record), 0, []
        for question, answer in turns:
            used += len(question) + len(answer)
            if char_budget is not None and used > char_budget:
                break
            kept.append((question, answer))
        if not kept:
            return []
        return families.conversation_segments(self.processor, self.family, kept, system=self.system)

    def image_tokens(self, record: dict) -> int:
        return families.image_token_count(self.processor, record["width"], record["height"])

    def image_inputs(self, image: Image.Image, expected_tokens: int, where: str) -> dict:
        image = self.image_frame().prepare_image(image, self.fill)
        got = families.image_token_count(self.processor, *image.size)
        if got != expected_tokens:
            raise InputError(f"{where}: the image is {image.size[0]}x{image.size[1]}, not the record's size "
                             f"({expected_tokens} image tokens were planned, it takes {got}); rerun conversion")
        out = self.image_processor(images=[image], return_tensors="pt")
        inputs = {"pixel_values": out["pixel_values"] if "image_grid_thw" in out else out["pixel_values"][0]}
        for key in ("image_grid_thw", "image_sizes"):
            if key in out:
                inputs[key] = torch.as_tensor(out[key][0])
        return inputs


def family_layout(processor, family: families.Family, box_prompt: str = "text",
                  system_prompt: str = "auto") -> TokenLayout:
    """The token layout training uses for ``family``'s ``processor``: LLaVA-1.5's derived from its chat template
    (``PromptFormat``), every other family's laid out by its chat template (``FamilyLayout``); its ``frame`` set, so
    records rendered for another family or resize setting are refused (issue 14). Raises ``families.FamilyError``."""
    fmt = PromptFormat.from_chat_template(processor).with_box_prompt(box_prompt)
    if family.uses_prompt_format:
        layout = TokenLayout(processor, fmt.with_system_prompt(system_prompt))
    else:
        system = (family.default_system_prompt if system_prompt == "auto"
                  else resolve_system_prompt(system_prompt, fmt))
        # pad_to_square is a record of what the frame does (BoxFrame.prepare_image pads; ViP-LLaVA's frame does)
        layout = FamilyLayout(processor, dataclasses.replace(fmt, pad_to_square=family.pad_to_square,
                                                             system_prompt=system), family)
    layout.frame = families.frame_from_processor(family, processor)
    return layout
