"""Every wording the model is taught or asked with, in one place.

Stage 1 writes its Q&A pairs with these templates, conversion keeps them, training
records the :class:`PromptFormat` it used in the model directory, and inference reads
it back from there, so a model is always asked the way it was taught.

The region prompts are LLaVA-1.5's own. ``{box}`` is a box placeholder (``<box:3>``) in the
annotation file and the box as the model family writes it (its :class:`vlm_core.families.BoxFrame`)
in the converted data and at inference.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
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
# The ground the scene lies on (issue 13's "surface" type); the boxed one when several objects share the class.
SURFACE = "What is the {label} lying on?"
SURFACE_BOXED = "What is the {label} at {box} lying on?"

# Visual box prompts (ViP-LLaVA; issue 24): the box is drawn on the image (vlm_core.images.draw_box_prompt)
# and the question names it by its colour, "the red box" (--box_prompt visual), or by its colour and its
# coordinates, "the red box [0.12, 0.34, 0.56, 0.78]" (--box_prompt both): {box} is that reference.
BOX_PROMPTS = ("text", "visual", "both")
BOX_PROMPT_HELP = (
    "how a question names a box: 'text' (its coordinates in the question, as LLaVA-1.5 was taught), 'visual' "
    "(the box drawn on the image in a colour per box, the question says \"the object in the red box\", as "
    "ViP-LLaVA), or 'both' (drawn, and the question keeps the coordinates: \"the red box [0.12, ...]\")")
VISUAL_BOX = "the {colour} box"
REGION_DESCRIPTION_VISUAL = "Please provide a short description for the object in {box}."
REGION_DESCRIPTION_LABELED_VISUAL = "Please provide a short description for the {label} in {box}."
REGION_LABEL_VISUAL = "What is the object in {box}? Answer with one word."
LOCATION_VISUAL = "Where is the {label} in {box}?"
RELATION_VISUAL = "Where is the {label_a} in {box_a} relative to the {label_b} in {box_b}?"
SURFACE_VISUAL = "What is the {label} in {box} lying on?"
# The visual wordings a model folder's prompt format keeps beside the text ones (see PromptFormat.templates).
VISUAL_TEMPLATES = {
    "region_description_visual": REGION_DESCRIPTION_VISUAL,
    "region_description_labeled_visual": REGION_DESCRIPTION_LABELED_VISUAL,
    "region_label_visual": REGION_LABEL_VISUAL,
}


def box_reference(box_prompt: str, colour: str, box_text: str) -> str:
    """How a question names a box: its text in the model's frame (``text``), "the red box" (``visual``),
    or "the red box [0.12, 0.34, 0.56, 0.78]" (``both``)."""
    if box_prompt == "text":
        return box_text
    named = VISUAL_BOX.format(colour=colour)
    return named if box_prompt == "visual" else f"{named} {box_text}"


def check_box_prompt(value: str) -> str:
    """``value`` when it names a way of putting boxes to the model; ValueError otherwise."""
    if value not in BOX_PROMPTS:
        raise ValueError(f"box_prompt must be one of {', '.join(BOX_PROMPTS)}, got {value!r}")
    return value

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
# once; vlm_core.llava_format re-exports it for the LLaVA file.
IMAGE_TOKEN = "<image>"

# System prompts by name. "llava_v1" is the system message of the conversation template that
# LLaVA-1.5 was instruction-tuned with (haotian-liu/LLaVA, llava/conversation.py, conv_vicuna_v1,
# selected by ``--version v1`` in scripts/v1_5/finetune*.sh and by ``--conv-mode vicuna_v1`` in its
# evaluation scripts); it precedes "USER: <image>\n..." after one space (the template's ``sep``).
SYSTEM_PROMPTS = {
    "none": "",
    "llava_v1": ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions."),
}
# LLaVA-1.5's turn layout (llava-hf chat template and LLaVA's SeparatorStyle.TWO alike).
LLAVA_15_FIRST_TURN = "USER: " + IMAGE_TOKEN + "\n{question} ASSISTANT:"
SYSTEM_PROMPT_HELP = (
    "system prompt put before the first turn, saved in prompt_format.json so inference asks the same way: "
    "'none', 'llava_v1' (LLaVA-1.5's own: \"" + SYSTEM_PROMPTS["llava_v1"] + "\"), 'auto' "
    "(llava_v1 for a base model with LLaVA-1.5's turn layout, which was instruction-tuned with it; for "
    "ViP-LLaVA the sentence its model card puts before '###Human:'; none otherwise), or any other text, "
    "used as it is")


def resolve_system_prompt(value: str | None, fmt: "PromptFormat | None" = None) -> str:
    """The system prompt text for a ``--system_prompt`` value ("" means none).

    ``none`` and ``llava_v1`` are names (:data:`SYSTEM_PROMPTS`); ``auto`` or None is
    :func:`default_system_prompt` of ``fmt``; anything else is the literal text. Raises
    ValueError for text that cannot be a system prompt (blank, or holding the image token),
    for the caller to report with its flag's name.
    """
    if value is None or value == "auto":
        return default_system_prompt(fmt if fmt is not None else PromptFormat())
    if value in SYSTEM_PROMPTS:
        return SYSTEM_PROMPTS[value]
    if not value.strip():
        raise ValueError("a system prompt cannot be blank (say 'none' for no system prompt)")
    image_token = fmt.image_token if fmt is not None else IMAGE_TOKEN
    if image_token in value:
        raise ValueError(f"a system prompt cannot hold the image token {image_token}")
    return value


def default_system_prompt(fmt: "PromptFormat") -> str:
    """LLaVA v1's system prompt for LLaVA-1.5's turn layout (what the base model was tuned with), else none.

    llava-hf/llava-1.5-* keep LLaVA-1.5's weights, which original LLaVA instruction-tuned with
    every conversation starting with :data:`SYSTEM_PROMPTS` ``["llava_v1"]``; their chat
    template merely leaves it out. Other layouts (other families) get none.
    """
    return SYSTEM_PROMPTS["llava_v1"] if fmt.first_turn == LLAVA_15_FIRST_TURN else ""


@dataclass
class PromptFormat:
    """How a conversation is laid out as text for the model.

    ``first_turn`` carries the image token; ``next_turn`` is used for later questions of
    the same conversation. After ``answer_prefix + answer`` the tokenizer's EOS is added
    (the llava-1.5-hf chat template puts none, and a model taught without it never stops).
    ``system_prompt`` (text, "" for none; see :func:`resolve_system_prompt`) goes before the
    first turn as ``system_template`` lays it out ("{system} ": LLaVA v1's "<system> USER: ...").
    Files saved before these two fields existed load with no system prompt, as they were trained.
    ``box_prompt`` (:data:`BOX_PROMPTS`) says how a region question names its box; it is saved only when it
    is not ``text``, so a text model's file is what it was before the field existed, and loads as ``text``.
    """
    first_turn: str = LLAVA_15_FIRST_TURN
    next_turn: str = "USER: {question} ASSISTANT:"
    answer_prefix: str = " "
    image_token: str = IMAGE_TOKEN
    # A record of how training fed the images; the model's box frame decides it (BoxFrame.prepare_image).
    pad_to_square: bool = True
    system_prompt: str = ""
    system_template: str = "{system} "
    box_prompt: str = "text"
    templates: dict = field(default_factory=lambda: {
        "region_description": REGION_DESCRIPTION,
        "region_description_labeled": REGION_DESCRIPTION_LABELED,
        "grounding": GROUNDING,
        "region_label": REGION_LABEL,
    })

    def prompt(self, question: str, first: bool = True) -> str:
        """The text before an answer: the system prompt (first turn only), then the turn with ``question``."""
        if not first:
            return self.next_turn.format(question=question)
        return self.system_prefix() + self.first_turn.format(question=question)

    def system_prefix(self) -> str:
        """What precedes the first turn: "" without a system prompt."""
        # str.replace, not format: a literal system prompt may hold braces.
        return self.system_template.replace("{system}", self.system_prompt) if self.system_prompt else ""

    def with_system_prompt(self, value: str | None) -> "PromptFormat":
        """A copy with the system prompt that ``value`` names (see :func:`resolve_system_prompt`)."""
        return replace(self, system_prompt=resolve_system_prompt(value, self))

    def with_box_prompt(self, value: str) -> "PromptFormat":
        """A copy that names boxes as ``value`` says, its visual wordings kept beside the text ones."""
        check_box_prompt(value)
        if value == "text":
            return replace(self, box_prompt=value)
        return replace(self, box_prompt=value, templates={**VISUAL_TEMPLATES, **self.templates})

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.box_prompt == "text":  # absent means text: a text model's file stays as it was
            del data["box_prompt"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PromptFormat":
        known = {f.name for f in fields(cls)}
        fmt = cls(**{k: v for k, v in data.items() if k in known})
        for key in ("first_turn", "next_turn"):
            if "{question}" not in getattr(fmt, key):
                raise ValueError(f"prompt format: {key} has no {{question}} placeholder")
        if fmt.image_token not in fmt.first_turn:
            raise ValueError("prompt format: first_turn has no image token")
        for key in ("system_prompt", "system_template"):
            if not isinstance(getattr(fmt, key), str):
                raise ValueError(f"prompt format: {key} must be a string")
        if "{system}" not in fmt.system_template:
            raise ValueError("prompt format: system_template has no {system} placeholder")
        if fmt.image_token in fmt.system_prompt:
            raise ValueError("prompt format: system_prompt holds the image token")
        if fmt.box_prompt not in BOX_PROMPTS:
            raise ValueError(f"prompt format: box_prompt must be one of {', '.join(BOX_PROMPTS)}, "
                             f"got {fmt.box_prompt!r}")
        return fmt

    def chat_template(self, eos_token: str) -> str:
        """A Jinja chat template that renders a conversation exactly as training laid it out: the system prompt
        (this format's, unless the messages start with a system message), each turn, ``answer_prefix``, each
        answer followed by ``eos_token`` (the llava-1.5-hf template writes a space there instead). Without BOS,
        which the tokenizer adds, as with every llava-hf template. Saved with a trained model so that other tools
        (vLLM, LLaMA-Factory, ``apply_chat_template``) ask it the way it was taught. ``default_system=""`` passed
        to ``apply_chat_template`` renders no system prompt when the messages have none."""
        def lit(text: str) -> str:  # a Jinja string literal (json's escapes are Jinja's)
            return json.dumps(text)
        first_head, first_tail = self.first_turn.split("{question}", 1)
        next_head, next_tail = self.next_turn.split("{question}", 1)
        sys_head, sys_tail = self.system_template.split("{system}", 1)
        text_of = ("{%- if message['content'] is string -%}{%- set text = message['content'] -%}{%- else -%}"
                   "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
                   " | join('') -%}{%- endif -%}")
        return (
            "{%- set ns = namespace(first=true, tail='') -%}"
            f"{{%- set system = default_system if default_system is defined else {lit(self.system_prompt)} -%}}"
            "{%- if messages and messages[0]['role'] == 'system' -%}{%- set message = messages[0] -%}"
            + text_of + "{%- set system = text -%}{%- endif -%}"
            f"{{%- if system -%}}{{{{ {lit(sys_head)} ~ system ~ {lit(sys_tail)} }}}}{{%- endif -%}}"
            "{%- for message in messages -%}" + text_of +
            "{%- if message['role'] == 'user' and ns.first -%}"
            f"{{{{ {lit(first_head)} ~ text }}}}{{%- set ns.tail = {lit(first_tail)} -%}}{{%- set ns.first = false -%}}"
            "{%- elif message['role'] == 'user' -%}"
            f"{{{{ {lit(next_head)} ~ text }}}}{{%- set ns.tail = {lit(next_tail)} -%}}"
            "{%- elif message['role'] == 'assistant' -%}"
            f"{{{{ ns.tail ~ {lit(self.answer_prefix)} ~ text ~ {lit(eos_token)} }}}}{{%- set ns.tail = '' -%}}"
            "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ ns.tail }}{%- endif -%}")

    def save(self, directory: str | os.PathLike) -> Path:
        from vlm_core.io_utils import write_json_atomic
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
        # A template saved by chat_template() below puts its system prompt in by default: probe the turns without it.
        no_default_system = {"default_system": ""} if "default_system" in template else {}
        try:
            first = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                add_generation_prompt=True, tokenize=False, **no_default_system)
            two = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                 {"role": "assistant", "content": [{"type": "text", "text": a}]},
                 {"role": "user", "content": [{"type": "text", "text": q}]}],
                add_generation_prompt=True, tokenize=False, **no_default_system)
        except Exception:
            return default
        image_token = getattr(processor, "image_token", default.image_token)
        if first.count(q) != 1 or image_token not in first or not two.startswith(first):
            return default
        rest = two[len(first):]               # " AAAA USER: QQQQ ASSISTANT:"
        if a not in rest:
            return default
        answer_prefix, after = rest.split(a, 1)
        # The template's separator after an answer (a space for llava-1.5) is replaced by EOS; a template that
        # writes EOS there itself (the one PromptFormat.chat_template saves with a trained model) has it removed.
        eos = getattr(getattr(processor, "tokenizer", None), "eos_token", None)
        next_turn = after[len(eos):] if eos and after.startswith(eos) else after.lstrip()
        if next_turn.count(q) != 1:
            return default
        bos = getattr(getattr(processor, "tokenizer", None), "bos_token", None)
        first_turn = first[len(bos):] if bos and first.startswith(bos) else first
        return cls(first_turn=first_turn.replace(q, "{question}"),
                   next_turn=next_turn.replace(q, "{question}"),
                   answer_prefix=answer_prefix, image_token=image_token,
                   system_template=_system_template(processor, q, first, bos) or default.system_template)


def _system_template(processor, q: str, first: str, bos: str | None) -> str | None:
    """How the chat template lays out a system message before the first turn, or None if it cannot tell.

    The llava-1.5-hf template renders a system message as its text plus a space ("S USER: ..."),
    the same as LLaVA's own v1 conversation template.
    """
    s = "SSSS"
    try:
        text = processor.apply_chat_template(
            [{"role": "system", "content": [{"type": "text", "text": s}]},
             {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True, tokenize=False)
    except Exception:
        return None

    def strip_bos(t: str) -> str:
        return t[len(bos):] if bos and t.startswith(bos) else t
    text, turn = strip_bos(text), strip_bos(first)
    if not text.endswith(turn):
        return None
    prefix = text[:len(text) - len(turn)]
    if prefix.count(s) != 1:
        return None
    return prefix.replace(s, "{system}")
