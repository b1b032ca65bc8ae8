"""Object descriptions: BLIP/BLIP-2 captions of context crops, turned into sentences.

For each object the captioner sees a crop of the box plus a margin (so the surface
around it is visible) and continues a per-class prompt such as
``"a photo of a glass lying on"``; the continuation ("the grass") names the surface.
The whole image gets one caption for the scene. All crops of a batch of images go
through the captioner together, grouped by prompt length in tokens (equal lengths need
no padding, so a caption does not depend on the rest of its batch).

:func:`compose_description` builds the sentence the dataset stores:
"Here is a glass. The glass is on the grass, in the bottom left of the image. It is
small. It is to the left of a bottle. The scene shows a park with trees."
"""
from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Sequence

from PIL import Image

from vlm_annotation.detectors import normalize_name
from vlm_core.io_utils import InputError, read_json
from vlm_core.prompts import article

DEFAULT_OBJECT_PROMPT = "a photo of {article} {label} lying on"
DEFAULT_IMAGE_PROMPT = "a picture of"
DEFAULT_KEY, IMAGE_KEY = "__default__", "__image__"
PLACEHOLDERS = ("label", "article")  # what PromptBook.for_label fills in; nothing else may be named
# Prepositions a prompt may end with; the continuation is then "on the grass", "in a bag", ...
_PREPOSITIONS = ("next to", "in front of", "on top of", "on", "in", "at", "near", "under", "beside", "by",
                 "inside", "behind", "above", "below", "against")
_WORD = re.compile(r"^(?:[a-z][a-z'-]*|\d+)$")
MAX_CAPTION_WORDS = 12


class PromptBook:
    """Per-class captioning prompts, from ``--prompts`` (a JSON object) or the defaults.

    The file maps class names to prompts; ``"__default__"`` is used for other classes and
    ``"__image__"`` for the whole-image caption. ``{label}`` and ``{article}`` are filled in (the
    only placeholders: ``{label.__class__}`` and the like are refused, since str.format would
    follow them into Python objects); ``{{`` and ``}}`` are literal braces. The whole-image prompt
    has no object, so no placeholder.
    """

    def __init__(self, mapping: dict | None = None):
        mapping = dict(mapping or {})
        self.default = mapping.pop(DEFAULT_KEY, DEFAULT_OBJECT_PROMPT)
        self.image_template = mapping.pop(IMAGE_KEY, DEFAULT_IMAGE_PROMPT)
        self.image = self.image_template.format()  # "{{" -> "{"
        # Keys are matched like class names everywhere else ("Wine_Glass" == "wine glass").
        self.by_class = {normalize_name(k): v for k, v in mapping.items()}

    @classmethod
    def from_file(cls, path: str | Path | None) -> "PromptBook":
        if path is None:
            return cls()
        data = read_json(path)
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object mapping class names to prompts")
        for key, value in data.items():
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{path}: {key}: expected a non-empty prompt string")
            allowed = () if key == IMAGE_KEY else PLACEHOLDERS
            try:
                fields = [(name, conversion, spec) for _, name, spec, conversion in string.Formatter().parse(value)
                          if name is not None]
            except ValueError as e:
                raise InputError(f"{path}: {key}: bad placeholder in prompt ({e}); use "
                                 f"{' or '.join('{' + n + '}' for n in PLACEHOLDERS)}, and {{{{ }}}} for braces") from None
            for name, conversion, spec in fields:
                if name not in allowed or conversion or spec:
                    shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                    use = (f"use {' or '.join('{' + n + '}' for n in allowed)}" if allowed
                           else "the whole-image prompt takes none")
                    raise InputError(f"{path}: {key}: placeholder {shown} is not allowed; {use} "
                                     "({{ and }} for literal braces)")
        return cls(data)

    def key_for(self, label: str) -> str:
        """The key of the prompt ``label`` gets: its own class, else ``__default__``."""
        key = normalize_name(label)
        return key if key in self.by_class else DEFAULT_KEY

    def for_label(self, label: str) -> str:
        template = self.by_class.get(normalize_name(label), self.default)
        return " ".join(template.format(label=label, article=article(label)).split())

    def to_dict(self) -> dict:
        return {DEFAULT_KEY: self.default, IMAGE_KEY: self.image_template, **dict(sorted(self.by_class.items()))}


def context_crop(image: Image.Image, box: Sequence[float], margin: float) -> Image.Image:
    """The box grown by ``margin`` x its size on every side (clipped), at least 8 px a side."""
    w, h = image.size
    bw, bh = box[2] - box[0], box[3] - box[1]
    x1 = max(0, int(box[0] - margin * bw))
    y1 = max(0, int(box[1] - margin * bh))
    x2 = min(w, int(round(box[2] + margin * bw)))
    y2 = min(h, int(round(box[3] + margin * bh)))
    if x2 - x1 < 8:
        x1, x2 = max(0, min(x1, w - 8)), min(w, max(x2, x1 + 8))
    if y2 - y1 < 8:
        y1, y2 = max(0, min(y1, h - 8)), min(h, max(y2, y1 + 8))
    return image.crop((x1, y1, x2, y2))


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def strip_prompt(text: str, prompt: str) -> str:
    """Remove the echoed prompt from a decoded caption (BLIP repeats its text prefix)."""
    full, head = _norm(text), _norm(prompt)
    if head and full.startswith(head):
        return full[len(head):].strip()
    return full


def clean_caption(text: str, max_words: int = MAX_CAPTION_WORDS) -> str:
    """Drop non-words, collapse repeats ("the grass the grass" -> "the grass"); "" if nothing is left."""
    words = [w.strip(".,;:!?\"()") for w in _norm(text).split()]
    words = [w for w in words if _WORD.match(w) and (len(w) > 1 or w in ("a", "i"))]
    changed = True
    while changed:  # remove immediately repeated n-grams, shortest first
        changed = False
        for n in range(1, 5):
            i = 0
            while i + 2 * n <= len(words):
                if words[i:i + n] == words[i + n:i + 2 * n]:
                    del words[i + n:i + 2 * n]
                    changed = True
                else:
                    i += 1
    words = words[:max_words]
    # Trailing function words make a dangling phrase ("the grass and").
    while words and words[-1] in ("a", "an", "the", "and", "or", "of", "with", "on", "in", "at", "to"):
        words.pop()
    if not any(len(w) > 2 for w in words):
        return ""
    return " ".join(words)


def surface_phrase(prompt: str, continuation: str) -> str:
    """"on the grass" from prompt "... lying on" and continuation "the grass"; "" if none."""
    if not continuation:
        return ""
    low = _norm(prompt)
    for prep in _PREPOSITIONS:
        if low.endswith(" " + prep) or low == prep:
            return f"{prep} {continuation}"
    return ""


# "The glass is on the grass, in the bottom left of the image." (what compose_description writes)
_PLACE = r"(?:in|at|on) the [a-z -]+ of the image"
_ARTICLES = ("the ", "a ", "an ")


def description_surface(description: str, label: str) -> tuple[str, str]:
    """(preposition, surface) named by a description of :func:`compose_description`, else ("", "").

    "Here is a glass. The glass is on the grass, in the bottom left of the image." ->
    ("on", "grass"): the article is dropped, so the surface answers "What is the glass lying on?".
    """
    match = re.search(rf"The {re.escape(label)} is (.+?), {_PLACE}\.", description or "")
    if not match:
        return "", ""
    phrase = match.group(1)
    for prep in _PREPOSITIONS:
        if phrase.startswith(prep + " "):
            rest = phrase[len(prep) + 1:]
            for art in _ARTICLES:
                if rest.startswith(art):
                    rest = rest[len(art):]
                    break
            return (prep, rest) if rest else ("", "")
    return "", ""


def compose_description(label: str, position: str, size: str, surface: str = "",
                        relations: Sequence[tuple[str, str]] = (), scene: str = "",
                        context: str = "") -> str:
    """"Here is a glass. The glass is on the grass, in the bottom left of the image. ..."

    ``relations`` are ``(phrase, other_label)`` pairs such as ``("to the left of", "bottle")``;
    ``context`` is a caption that does not fit the "is <preposition> ..." form.
    """
    parts = [f"Here is {article(label)} {label}."]
    where = f"{surface}, {position}" if surface else position
    parts.append(f"The {label} is {where}.")
    parts.append(f"It is {size}.")
    if context:
        parts.append(f"Around it: {context}.")
    relations = list(dict.fromkeys(relations))  # "next to a can and next to a can" says it once
    if relations:
        rel = [f"{phrase} {article(other)} {other}" for phrase, other in relations]
        joined = rel[0] if len(rel) == 1 else ", ".join(rel[:-1]) + " and " + rel[-1]
        parts.append(f"It is {joined}.")
    if scene:
        parts.append(f"The scene shows {scene}.")
    return " ".join(parts)


class Captioner:
    """BLIP or BLIP-2 conditional captioning, batched and grouped by prompt."""

    def __init__(self, model_name: str, device: str, batch_size: int = 32, max_new_tokens: int = 20,
                 dtype: str = "auto"):
        import torch
        from transformers import AutoConfig, AutoProcessor

        try:
            config = AutoConfig.from_pretrained(model_name)
        except (OSError, ValueError) as e:
            raise InputError(f"--captioner_model: cannot load {model_name}: {str(e).splitlines()[0]}") from None
        kind = config.model_type
        if kind == "blip":
            from transformers import BlipForConditionalGeneration as model_cls
        elif kind == "blip-2":
            from transformers import Blip2ForConditionalGeneration as model_cls
        else:
            raise InputError(f"--captioner_model: {model_name} is a {kind!r} model; give a BLIP or BLIP-2 captioner")
        if dtype == "auto":
            torch_dtype = torch.float16 if device.startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        try:
            self.processor = AutoProcessor.from_pretrained(model_name)
            self.model = model_cls.from_pretrained(model_name, dtype=torch_dtype).to(device).eval()
        except OSError as e:
            raise InputError(f"--captioner_model: cannot load {model_name}: {str(e).splitlines()[0]}") from None
        tokenizer = getattr(self.processor, "tokenizer", None)
        if kind == "blip-2" and tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only LM: generate after the prompt, not after pads
        self.kind, self.device, self.dtype = kind, device, torch_dtype
        self.batch_size, self.max_new_tokens = max(1, batch_size), max_new_tokens
        self._lengths: dict[str, int] = {}

    def _generate(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        import torch
        texts = list(prompts) if any(prompts) else None
        inputs = self.processor(images=images, text=texts, return_tensors="pt")
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        return self.processor.batch_decode(out, skip_special_tokens=True)

    def check_prompts(self, prompts: dict[str, list[str]]) -> None:
        """Refuse, once at load, a prompt the captioner cannot continue for ``max_new_tokens`` within its
        context (generation would fail with an IndexError on the first such crop); ``prompts``: prompt key
        (a class, ``__default__``, ``__image__``) -> the prompts it gives."""
        config = getattr(self.model.config, "text_config", None)
        limit = getattr(config, "max_position_embeddings", None)
        if not isinstance(limit, int):
            return
        # BLIP-2's processor puts the query tokens into the text, ahead of the prompt.
        extra = getattr(self.model.config, "num_query_tokens", 0) if self.kind == "blip-2" else 0
        for key, texts in prompts.items():
            for text in texts:
                length = self._prompt_length(text) + extra
                if length + self.max_new_tokens > limit:
                    raise InputError(f"--prompts: {key}: the prompt is {length} tokens; with --caption_max_tokens "
                                     f"{self.max_new_tokens} it needs {length + self.max_new_tokens} positions, more "
                                     f"than the captioner's {limit}: shorten the prompt or lower --caption_max_tokens")

    def _prompt_length(self, prompt: str) -> int:
        if prompt not in self._lengths:
            tokenizer = getattr(self.processor, "tokenizer", None)
            self._lengths[prompt] = len(tokenizer(prompt)["input_ids"]) if tokenizer is not None and prompt else 0
        return self._lengths[prompt]

    def caption(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]:
        """One cleaned continuation per image (the prompt stripped), in the input order.

        Prompts of equal token length share a batch: no padding is needed, so a caption
        does not depend on what else is in its batch ("a photo of a glass lying on" and
        "... a can lying on" usually go together).
        """
        results = [""] * len(images)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(self._prompt_length(p), []).append(i)
        for _, idxs in sorted(groups.items()):
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start:start + self.batch_size]
                decoded = self._generate([images[i] for i in chunk], [prompts[i] for i in chunk])
                for i, text in zip(chunk, decoded):
                    results[i] = clean_caption(strip_prompt(text, prompts[i]))
        return results
