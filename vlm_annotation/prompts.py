"""Every wording the model is taught or asked with, in one place.

Stage 1 writes its Q&A pairs with these templates, conversion keeps them, training
records the :class:`PromptFormat` it used in the model directory, and inference reads
it back from there, so a model is always asked the way it was taught.

The region prompts are LLaVA-1.5's own; boxes inside them are the shared box text
(:func:`vlm_annotation.boxes.box_to_text`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

PROMPT_FORMAT_FILE = "prompt_format.json"

# LLaVA-1.5's region-level prompts (from its instruction-tuning mix).
REGION_DESCRIPTION = "Please provide a short description for this region: {box}"
REGION_DESCRIPTION_LABELED = "Please provide a short description for this {label}: {box}"
GROUNDING = "Please provide the bounding box coordinate of the region this sentence describes: {text}"
# Ours, in the same style.
REGION_LABEL = "What is the object in this region: {box}? Answer with one word."
COUNT = "How many objects are there?"
COUNT_CLASS = "How many {plural} are there?"
EXISTS = "Is there a {label} in this image?"
LOCATION = "Where is the {label}?"
LOCATION_BOXED = "Where is the {label} at {box}?"
RELATION = "Where is the {label_a} {box_a} relative to the {label_b} {box_b}?"

_IRREGULAR_PLURALS = {"person": "people", "man": "men", "woman": "women", "child": "children",
                      "mouse": "mice", "knife": "knives", "leaf": "leaves", "sheep": "sheep",
                      "glasses": "glasses", "scissors": "scissors"}


def plural(noun: str) -> str:
    """English plural of a class name ("glass" -> "glasses", "bottle" -> "bottles")."""
    words = noun.split()
    if not words:
        return noun
    last = words[-1]
    low = last.lower()
    if low in _IRREGULAR_PLURALS:
        out = _IRREGULAR_PLURALS[low]
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        out = last + "es"
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return " ".join(words[:-1] + [out])


def article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def count_answer(n: int, noun: str = "object", where: str = " in this image") -> str:
    """"There are 3 objects in this image." / "There is 1 object ..." / "There are no objects ..."."""
    if n == 0:
        return f"There are no {plural(noun)}{where}."
    if n == 1:
        return f"There is 1 {noun}{where}."
    return f"There are {n} {plural(noun)}{where}."


# The image placeholder of the LLaVA file format and of LLaVA-1.5's chat template: defined here,
# once; vlm_training.llava_format re-exports it for the LLaVA file.
IMAGE_TOKEN = "<image>"


@dataclass
class PromptFormat:
    """How a conversation is laid out as text for the model.

    ``first_turn`` carries the image token; ``next_turn`` is used for later questions of
    the same conversation. After ``answer_prefix + answer`` the tokenizer's EOS is added
    (the llava-1.5-hf chat template puts none, and a model taught without it never stops).
    """
    first_turn: str = "USER: " + IMAGE_TOKEN + "\n{question} ASSISTANT:"
    next_turn: str = "USER: {question} ASSISTANT:"
    answer_prefix: str = " "
    image_token: str = IMAGE_TOKEN
    pad_to_square: bool = True
    box_decimals: int = 2
    templates: dict = field(default_factory=lambda: {
        "region_description": REGION_DESCRIPTION,
        "region_description_labeled": REGION_DESCRIPTION_LABELED,
        "grounding": GROUNDING,
        "region_label": REGION_LABEL,
    })

    def prompt(self, question: str, first: bool = True) -> str:
        return (self.first_turn if first else self.next_turn).format(question=question)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PromptFormat":
        known = {f.name for f in fields(cls)}
        fmt = cls(**{k: v for k, v in data.items() if k in known})
        for key in ("first_turn", "next_turn"):
            if "{question}" not in getattr(fmt, key):
                raise ValueError(f"prompt format: {key} has no {{question}} placeholder")
        if fmt.image_token not in fmt.first_turn:
            raise ValueError("prompt format: first_turn has no image token")
        return fmt

    def save(self, directory: str | os.PathLike) -> Path:
        from vlm_annotation.io_utils import write_json_atomic
        path = Path(directory) / PROMPT_FORMAT_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "PromptFormat":
        """The format saved in ``directory``, or the default one when there is none."""
        path = Path(directory) / PROMPT_FORMAT_FILE
        if not path.is_file():
            return cls()
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_chat_template(cls, processor) -> "PromptFormat":
        """Derive the turn layout from a processor's chat template (falls back to the default).

        Renders probe conversations and cuts them at the placeholders, so the text the
        model is trained on is exactly what the template renders, plus EOS after answers.
        """
        default = cls()
        template = getattr(processor, "chat_template", None)
        if not template:
            return default
        q, a = "QQQQ", "AAAA"
        try:
            first = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                add_generation_prompt=True, tokenize=False)
            two = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                 {"role": "assistant", "content": [{"type": "text", "text": a}]},
                 {"role": "user", "content": [{"type": "text", "text": q}]}],
                add_generation_prompt=True, tokenize=False)
        except Exception:
            return default
        image_token = getattr(processor, "image_token", default.image_token)
        if first.count(q) != 1 or image_token not in first or not two.startswith(first):
            return default
        rest = two[len(first):]               # " AAAA USER: QQQQ ASSISTANT:"
        if a not in rest:
            return default
        answer_prefix, after = rest.split(a, 1)
        # The template's separator after an answer (a space for llava-1.5) is replaced by EOS.
        next_turn = after.lstrip()
        if next_turn.count(q) != 1:
            return default
        bos = getattr(getattr(processor, "tokenizer", None), "bos_token", None)
        first_turn = first[len(bos):] if bos and first.startswith(bos) else first
        return cls(first_turn=first_turn.replace(q, "{question}"),
                   next_turn=next_turn.replace(q, "{question}"),
                   answer_prefix=answer_prefix, image_token=image_token)
