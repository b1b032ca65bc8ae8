"""Asking a loaded model the questions of a LLaVA file, one definition for every caller: ``predict.py`` (through
``VLMInference``) after training and ``train_vlm.py --eval_generate`` during it, so an answer logged while
training is the answer the saved model gives afterwards.

- :func:`record_questions`: the questions of one LLaVA record, one per human turn (turn k > 0 asked as a fresh
  single-turn question about the same image, with the record's visual box prompts drawn on it).
- :func:`generation_processor`: the processor as generation needs it (left padding, a pad token).
- :func:`greedy_settings`: greedy decoding with ``max_new_tokens``, as inference decodes.
- :func:`generate_answers`: prompts laid out by the family (:func:`vlm_core.families.question_prompt`), boxes
  drawn (:func:`vlm_core.images.draw_box_prompt`) and images prepared by the box frame, batched ``generate``,
  answers decoded by :func:`vlm_core.families.decode_answer`.

Torch is imported where a model runs, never on import.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

from PIL import Image

from vlm_core import families
from vlm_core.images import draw_box_prompt
from vlm_core.llava_format import IMAGE_TOKEN, record_box_prompt
from vlm_core.prompts import PromptFormat

DEFAULT_PAD_FILL = (0.5, 0.5, 0.5)   # a processor without an image mean: mid grey
DEFAULT_MAX_NEW_TOKENS = 128        # most tokens per answer, unless asked otherwise


def record_questions(record: dict) -> list[dict]:
    """The questions of one (validated) LLaVA record: ``{"id", "image", "turn", "question", "reference",
    "type"}`` per human turn, the image token removed from the question; a record with visual box prompts
    adds ``"drawn_boxes"``, the boxes to draw on its image."""
    turns, qa_types = record["conversations"], record.get("qa_types")
    mode, drawn = record_box_prompt(record)
    extra = {} if mode == "text" else {"drawn_boxes": drawn}
    return [{"id": record["id"], "image": record["image"], "turn": j // 2,
             "question": turns[j]["value"].replace(IMAGE_TOKEN, "").strip(), "reference": turns[j + 1]["value"],
             "type": qa_types[j // 2] if qa_types is not None else None, **extra}
            for j in range(0, len(turns), 2)]


def pad_fill(processor) -> tuple[float, ...]:
    """The colour the box frame pads an image with: the processor's image mean."""
    mean = getattr(processor.image_processor, "image_mean", None) or DEFAULT_PAD_FILL
    return tuple(float(v) for v in mean)


def generation_processor(processor, copy_first: bool = False):
    """``processor`` set up for batched generation: every prompt of a batch ends at the right edge (left
    padding), and a tokenizer without a pad token pads with EOS. ``copy_first`` leaves the given one as it was
    (training goes on with right padding)."""
    if copy_first:
        processor = copy.deepcopy(processor)
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def greedy_settings(model, tokenizer, max_new_tokens: int, **overrides) -> dict:
    """``generate`` keyword arguments: greedy, one beam, at most ``max_new_tokens``, padding with the tokenizer's
    pad token when the model's generation config names none."""
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
    settings.update(overrides)
    if getattr(model.generation_config, "pad_token_id", None) is None:
        settings.setdefault("pad_token_id", tokenizer.pad_token_id)
    return settings


def model_image(frame: families.BoxFrame, fill: Sequence[float], image: Image.Image,
                drawn_boxes: list | None = None) -> Image.Image:
    """What the model sees of ``image`` (RGB, as loaded): its visual box prompts drawn in its own pixels, then
    prepared by the box frame (LLaVA-1.5: padded to a square), as training's dataset prepares it."""
    return frame.prepare_image(draw_box_prompt(image, drawn_boxes) if drawn_boxes else image, fill)


def generate_answers(model, processor, family: families.Family, fmt: PromptFormat, frame: families.BoxFrame,
                     fill: Sequence[float], questions: Sequence[str], images: Sequence[Image.Image],
                     batch_size: int, settings: dict, pixel_dtype=None,
                     check_lengths: Callable[[list[int], int], None] | None = None,
                     drawn_boxes: Sequence[list | None] | None = None) -> list[str]:
    """The answers to ``questions[i]`` about ``images[i]`` (RGB, as loaded), ``batch_size`` at a time.

    ``processor`` must pad on the left (:func:`generation_processor`); ``pixel_dtype``: the dtype the vision
    tower takes; ``check_lengths(prompt_lengths, offset)`` may refuse a batch before it is generated;
    ``drawn_boxes[i]``: the visual box prompts to draw on ``images[i]`` first (None or empty: none).
    """
    import torch
    answers: list[str] = []
    drawn_boxes = drawn_boxes or [None] * len(images)
    for start in range(0, len(questions), batch_size):
        texts = [families.question_prompt(family, processor, fmt, q) for q in questions[start:start + batch_size]]
        pixels = [model_image(frame, fill, img, drawn)
                  for img, drawn in zip(images[start:start + batch_size], drawn_boxes[start:start + batch_size])]
        inputs = processor(images=pixels, text=texts, padding=True, return_tensors="pt")
        if check_lengths is not None:
            check_lengths(inputs["attention_mask"].sum(dim=1).tolist(), start)
        inputs = inputs.to(model.device)
        if "pixel_values" in inputs and pixel_dtype is not None:
            inputs["pixel_values"] = inputs["pixel_values"].to(pixel_dtype)
        with torch.inference_mode():
            output = model.generate(**inputs, **settings)
        # Decoder-only generation returns prompt + answer; with left padding every prompt
        # ends at the same column, so the answer is everything after it.
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        answers.extend(families.decode_answer(processor.tokenizer, family, row).strip()
                       for row in new_tokens.tolist())
    return answers
