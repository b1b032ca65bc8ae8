"""Stage 5: ask a fine-tuned LLaVA about one object (by its box) or anything about an image.

    python vlm_inference/vlm_inference.py --model_path vlm_model --base_model llava-hf/llava-1.5-7b-hf \\
        --image image.jpg --bbox 150 200 300 400 --label glass
    python vlm_inference/vlm_inference.py --model_path vlm_model --image image.jpg \\
        --question "How many objects are there?"

From Python (``from vlm_inference import VLMInference`` works too):

    from vlm_inference.vlm_inference import VLMInference
    vlm = VLMInference(model_path="./vlm_model", base_model="llava-hf/llava-1.5-7b-hf")
    vlm.describe_object("image.jpg", bbox=[150, 200, 300, 400], label="glass")
    vlm.answer_question("image.jpg", "How many objects are there?")

``model_path`` may be what training wrote (a LoRA adapter: ``adapter_config.json``, put on
its base model, which is ``base_model`` or else the one the adapter names), a merged or
fully fine-tuned model (``config.json``), or a base model alone (a folder or a hub id).
The model is asked exactly as training taught it: the prompt format is read from
``model_path/prompt_format.json`` (a model without one gets the default LLaVA-1.5 format), and
the image is prepared and boxes are written and read by the model's box frame (box_frame.json,
saved with it; else its family's, vlm_core/families.py): LLaVA-1.5's pads the image to a square
with the processor's mean colour, the other families' (LLaVA-NeXT/OneVision, Qwen2/2.5/3-VL,
asked through their chat template) leave it as it is. Decoding is greedy unless generation
settings say otherwise. A model trained with visual box prompts (``box_prompt`` in prompt_format.json) is
asked about a box with the box drawn on the image in red ("the object in the red box"); ``box_prompt=``
(``--box_prompt``) asks otherwise, with a warning when the model was taught another way
(:class:`BoxPromptWarning`, importable from ``vlm_inference`` for ``warnings.filterwarnings``).
A prompt longer than the model's context (with the new tokens) is refused, never cut.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image

if __package__ in (None, ""):  # run as a file: this file would shadow the vlm_inference package it imports from
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from vlm_core import boxes, families, generation, prompts, runtime
from vlm_core.images import BOX_PROMPT_SLOTS, ImageLoadError, as_rgb_image
from vlm_core.io_utils import InputError
from vlm_core.llava_format import check_drawn_boxes
from vlm_core.model_dir import (
    ADAPTER_CONFIG_FILE,
    FRAME_FILE,
    MODEL_CONFIG_FILE,
)
from vlm_core.prompts import PROMPT_FORMAT_FILE, PromptFormat
from vlm_inference.model_args import (
    InferenceInputError,
    add_model_args,
    check_model_args,
    refuse_damaged_weights,
    refuse_family_mismatch,
    refuse_half_written,
)

# Any of these in a folder means the processor (or at least its tokenizer) was saved there.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
DEFAULT_BATCH_SIZE = 8


class BoxPromptWarning(UserWarning):
    """A model asked with other box prompts than it was trained with (``box_prompt=``)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _checked(check, *args):
    """A shared runtime check whose InputError (or argparse's type error) becomes an InferenceInputError."""
    try:
        return check(*args)
    except (InputError, argparse.ArgumentTypeError) as e:
        raise InferenceInputError(str(e)) from None


def _checked_item(check, index: int, *args):
    """:func:`_checked` for item ``index`` of a batched call (the error names it)."""
    try:
        return check(*args)
    except InputError as e:
        raise InferenceInputError(str(e), index) from None


def _normalised_box_error(values: list[float], width: int, height: int, hint: str) -> InferenceInputError:
    pixels = [round(v * (width if k % 2 == 0 else height), 1) for k, v in enumerate(values)]
    return InferenceInputError(
        f"bbox {[float(v) for v in values]}: every value is <= 1, so it looks normalised (0-1); boxes are pixels "
        f"x1 y1 x2 y2 of the displayed image ({width}x{height}): multiply x by the width and y by the height, "
        f"here {[int(v) if v == int(v) else v for v in pixels]}{hint}")


def validate_bbox(bbox: Any, width: int, height: int, normalised: bool = False, hint: str = "") -> list[float]:
    """A pixel box ``[x1, y1, x2, y2]`` clipped to the image (with a warning when it had to be); refused
    unless it is four finite numbers, corners in order, with some area inside the image.

    A box whose values are all <= 1 is refused as a normalised box taken for pixels (the message gives the
    pixel box): a real box that small covers at most one pixel, too little to describe. ``normalised``:
    the box is in 0-1 fractions of the width and height, converted to pixels here. ``hint``: appended to
    that message (the command line's flag)."""
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise InferenceInputError(f"bbox must be four numbers [x1, y1, x2, y2], got {bbox!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InferenceInputError(f"bbox must be four finite numbers [x1, y1, x2, y2], got {bbox!r}")
    if normalised:
        values = [v * (width if k % 2 == 0 else height) for k, v in enumerate(values)]
    elif max(values) <= 1:
        raise _normalised_box_error(values, width, height, hint)
    x1, y1, x2, y2 = values
    for lo, hi, a, b in ((x1, x2, "x1", "x2"), (y1, y2, "y1", "y2")):
        if hi < lo:
            raise InferenceInputError(f"bbox {values}: {b} ({hi:g}) < {a} ({lo:g}); boxes are [x1, y1, x2, y2]")
    clipped = [float(v) for v in boxes.clip_box(values, width, height)]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        where = "has no area" if (x2 == x1 or y2 == y1) else f"lies outside the {width}x{height} image"
        raise InferenceInputError(f"bbox {values} {where}")
    if clipped != values:
        warnings.warn(f"bbox {values} goes outside the {width}x{height} image; clipped to "
                      f"{[round(float(v), 2) for v in clipped]}", UserWarning, stacklevel=3)
    return clipped


def folder_as_image_message(folder: Any, flag: str = "image") -> str:
    """A folder given where one image file is asked for: the message names the stage that asks about many."""
    return (f"{flag}: {os.fspath(folder)} is a folder, not an image file; to ask about every image of a folder "
            f"use predict.py: python vlm_inference/predict.py --model_path MODEL --data QUESTIONS_llava.json "
            f"--image_dir {os.fspath(folder)} (convert_to_llava_format.py writes the questions)")


def load_image(image: Any) -> Image.Image:
    """A path or a PIL image -> RGB PIL in displayed orientation; InferenceInputError otherwise."""
    if isinstance(image, (str, os.PathLike)):
        if "\0" in os.fspath(image):  # the OS cannot name such a file; Python would say "embedded null byte"
            raise InferenceInputError(f"image path {os.fspath(image)!r} holds a NUL byte")
        if Path(image).is_dir():
            raise InferenceInputError(folder_as_image_message(image))
        if not Path(image).is_file():
            raise InferenceInputError(f"image not found: {image}")
    elif not isinstance(image, Image.Image):
        raise InferenceInputError(f"image must be a file path or a PIL image, got {type(image).__name__}")
    try:
        return as_rgb_image(image)
    except ImageLoadError as e:
        raise InferenceInputError(f"image {image}: {e}") from None


class VLMInference:
    """A vision-language model (adapter, merged, full or base) loaded once, asked about images and boxes.

    Its family (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL; see
    vlm_core/families.py) decides how a question is laid out and how a box is written in a
    question and read back from an answer (the frame a trained model saved in box_frame.json).

    ``precision`` is ``auto`` (bf16/fp16 on a GPU, fp32 on the CPU), ``fp32``, ``bf16``,
    ``fp16`` or a torch dtype; ``dtype`` is its old name. ``box_prompt`` (``text``, ``visual``, ``both``):
    how a region question names its box; None asks as the model was trained (its prompt_format.json).
    """

    load_image = staticmethod(load_image)

    def __init__(self, model_path: str | os.PathLike, base_model: str | None = None, device: str | None = None,
                 precision: Any = None, load_in_8bit: bool = False, load_in_4bit: bool = False, dtype: Any = None,
                 box_prompt: str | None = None):
        if precision is not None and dtype is not None:
            raise InferenceInputError("give precision or its old name dtype, not both")
        self.device = _checked(runtime.resolve_device, device or "auto")
        self.dtype = _checked(runtime.resolve_dtype, dtype if precision is None else precision, self.device)
        if load_in_8bit and load_in_4bit:
            raise InferenceInputError("choose one of load_in_8bit and load_in_4bit")
        self.quantized = bool(load_in_8bit or load_in_4bit)
        if self.quantized and not self.device.startswith("cuda"):
            raise InferenceInputError(
                f"{'load_in_8bit' if load_in_8bit else 'load_in_4bit'} needs a CUDA GPU (bitsandbytes); "
                f"the device here is {self.device}: load without quantization instead")

        self.model_path = str(model_path)
        refuse_half_written(model_path)
        refuse_damaged_weights(model_path)  # a cut-short weights file would fail deep inside safetensors
        local = Path(model_path).expanduser()
        self.local_dir = local if local.is_dir() else None
        self.kind, self.base_model = "model", None  # a merged / full / base model needs no base
        if self.local_dir is None:
            weights = _checked(runtime.require_model, self.model_path, "--model_path")
        elif (local / ADAPTER_CONFIG_FILE).is_file():
            self.kind, self.base_model = "adapter", self._adapter_base(local, base_model)
            refuse_family_mismatch(local, self.base_model)
            weights = self.base_model
        elif (local / MODEL_CONFIG_FILE).is_file():
            weights = str(local)
        else:
            raise InferenceInputError(f"--model_path: {local} holds neither a LoRA adapter ({ADAPTER_CONFIG_FILE}) "
                                      f"nor a model ({MODEL_CONFIG_FILE})")

        try:  # the small files first: a bad prompt format or processor fails before the weights load
            self.prompt_format = PromptFormat.load(local) if self.local_dir else PromptFormat()
        except (ValueError, TypeError, OSError) as e:
            raise InferenceInputError(f"{local / PROMPT_FORMAT_FILE}: {_first_line(e)}") from None
        self.prompt_format = self.prompt_format.with_box_prompt(self._box_prompt(box_prompt, local))
        has_processor = self.local_dir is not None and any((local / f).is_file() for f in PROCESSOR_FILES)
        processor = self._load_processor(str(local) if has_processor else (self.base_model or self.model_path))
        self.processor = generation.generation_processor(processor)  # left padding: prompts end at the right edge
        self.tokenizer = self.processor.tokenizer
        # The family decides the prompt layout and the box frame (issue 14): a trained folder saved its frame.
        try:
            saved_frame = self.local_dir is not None and (self.local_dir / FRAME_FILE).is_file()
            self.family = families.detect_family(self.local_dir if saved_frame else
                                                 (self.base_model or self.local_dir or self.model_path))
            saved = families.BoxFrame.load(self.local_dir) if self.local_dir else None
            self.frame = saved or families.frame_from_processor(self.family, self.processor)
        except families.FamilyError as e:
            raise InferenceInputError(f"--model_path: {e}") from None
        self.pad_fill = generation.pad_fill(self.processor)

        self.model = self._load_model(weights, "--base_model" if self.kind == "adapter" else "--model_path",
                                      load_in_8bit, load_in_4bit)
        if self.kind == "adapter":
            self.model = self._attach_adapter(self.model, local)
        if not self.quantized:
            self.model.to(self.device)
        self.model.eval()
        # Prompt + answer must fit the positions the language model was trained with.
        self.max_length = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    # ------------------------------------------------------------------ loading
    def _box_prompt(self, requested: str | None, local: Path) -> str:
        """The way boxes are put to the model: ``requested``, else what training saved. Asking a trained model
        another way than it was taught is allowed (an experiment), with a warning: its answers may be poor."""
        trained = self.prompt_format.box_prompt
        if requested is None:
            return trained
        try:
            prompts.check_box_prompt(requested)
        except ValueError as e:
            raise InferenceInputError(str(e)) from None
        if requested != trained and self.local_dir is not None and (local / PROMPT_FORMAT_FILE).is_file():
            warnings.warn(f"box_prompt {requested}: {local} was trained with box_prompt {trained} "
                          f"({PROMPT_FORMAT_FILE}); asking with {requested} as told", BoxPromptWarning, stacklevel=3)
        return requested

    @staticmethod
    def _adapter_base(adapter_dir: Path, base_model: str | None) -> str:
        if base_model:
            return _checked(runtime.require_model, str(base_model), "--base_model")
        try:
            named = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8")).get(
                "base_model_name_or_path")  # peft writes it: the base the adapter was trained on
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise InferenceInputError(f"{adapter_dir / ADAPTER_CONFIG_FILE}: unreadable: {_first_line(e)}") from None
        if not named:
            raise InferenceInputError(f"--model_path {adapter_dir} is a LoRA adapter that names no base model: "
                                      "pass --base_model")
        try:
            return runtime.require_model(str(named), "--base_model")
        except InputError:
            raise InferenceInputError(f"the adapter in {adapter_dir} was trained on {named}, which is not found "
                                      "here: pass --base_model") from None

    def _load_model(self, source: str, flag: str, load_in_8bit: bool, load_in_4bit: bool):
        from safetensors import SafetensorError
        from transformers import AutoModelForImageTextToText
        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if self.quantized:
            import torch
            from transformers import BitsAndBytesConfig
            if load_in_4bit:
                quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=self.dtype,
                                           bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
            else:
                quant = BitsAndBytesConfig(load_in_8bit=True)
            kwargs["quantization_config"] = quant
            kwargs["device_map"] = {"": torch.device(self.device).index or 0}
        try:
            return AutoModelForImageTextToText.from_pretrained(source, **kwargs)
        except ImportError as e:
            raise InferenceInputError(f"cannot load {source}: {_first_line(e)}") from None
        except SafetensorError as e:  # a base model's files are not checked up front: it may be a hub id
            raise InferenceInputError(f"{flag}: a weights file of {source} is damaged ({_first_line(e)}): "
                                      "copy or download the model again") from None
        except (OSError, ValueError, KeyError) as e:
            raise InferenceInputError(f"{flag}: cannot load a vision-language model from {source}: "
                                      f"{_first_line(e)}") from None

    def _attach_adapter(self, model, adapter_dir: Path):
        from peft import PeftModel
        from safetensors import SafetensorError
        with warnings.catch_warnings():
            # peft 0.21 still calls transformers' deprecated is_gradient_checkpointing: noise for users.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            try:
                model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
                raise InferenceInputError(f"--model_path: cannot put the adapter {adapter_dir} on "
                                          f"{self.base_model}: {_first_line(e)}") from None
            # Folding LoRA into the weights makes generation as fast as the base model's;
            # 4/8-bit weights cannot take the merge, so they keep the adapter alongside.
            return model if self.quantized else model.merge_and_unload()

    @staticmethod
    def _load_processor(source: str):
        from transformers import AutoProcessor
        try:
            processor = AutoProcessor.from_pretrained(source)
        except (OSError, ValueError, KeyError) as e:
            raise InferenceInputError(f"cannot load the processor from {source}: {_first_line(e)}") from None
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
            raise InferenceInputError(f"{source}: the processor there is not an image+text processor")
        return processor

    # ------------------------------------------------------------------ prompts
    def clean_question(self, question: Any, index: int | None = None) -> str:
        """The question as the model will read it: stripped, without a leading image token."""
        if not isinstance(question, str):
            raise InferenceInputError(f"question must be text, got {type(question).__name__}", index)
        token = self.prompt_format.image_token
        text = question.strip().removeprefix(token).strip()  # a question copied from a LLaVA file ("<image>\nQ")
        if not text:
            raise InferenceInputError("question is empty", index)
        if token in text:
            raise InferenceInputError(f"question must not contain the image token {token}: {question!r}", index)
        return text

    def region_question(self, bbox: Sequence[float], width: int, height: int, label: str | None = None) -> str:
        """The question that asks for a description of ``bbox`` (pixels of a ``width`` x ``height`` image); with
        visual box prompts it names the box drawn by :meth:`region_boxes` ("the object in the red box")."""
        mode, templates = self.prompt_format.box_prompt, self.prompt_format.templates
        box = prompts.box_reference(mode, BOX_PROMPT_SLOTS[0], self.frame.render_box(bbox, width, height))
        visual = mode != "text"
        if label is not None and str(label).strip():
            template = (templates.get("region_description_labeled_visual", prompts.REGION_DESCRIPTION_LABELED_VISUAL)
                        if visual else templates.get("region_description_labeled", prompts.REGION_DESCRIPTION_LABELED))
            return template.format(label=str(label).strip(), box=box)
        template = (templates.get("region_description_visual", prompts.REGION_DESCRIPTION_VISUAL) if visual
                    else templates.get("region_description", prompts.REGION_DESCRIPTION))
        return template.format(box=box)

    def region_boxes(self, bbox: Sequence[float]) -> list[dict]:
        """The visual box prompt drawn for a question about ``bbox`` (the first slot's colour), none with text prompts."""
        if self.prompt_format.box_prompt == "text":
            return []
        return [{"bbox": [float(v) for v in bbox], "colour": BOX_PROMPT_SLOTS[0]}]

    def grounding_question(self, description: str, index: int | None = None) -> str:
        """"Please provide the bounding box coordinate of the region this sentence describes: <description>"."""
        text = self.clean_question(description, index)
        return self.prompt_format.templates.get("grounding", prompts.GROUNDING).format(text=text)

    def model_image(self, image: Image.Image, drawn_boxes: list | None = None) -> Image.Image:
        """What the model sees, as training prepared it: ``drawn_boxes`` (visual box prompts) drawn, then LLaVA-1.5's
        padded to a square in the processor's mean."""
        return generation.model_image(self.frame, self.pad_fill, image, drawn_boxes)

    def prompt(self, question: str) -> str:
        """The text the model is asked with, laid out as training laid it out."""
        return families.question_prompt(self.family, self.processor, self.prompt_format, question)

    # ------------------------------------------------------------------ generation
    def _generate(self, questions: list[str], images: list[Image.Image], batch_size: int,
                  generate_kwargs: dict, drawn_boxes: list | None = None) -> list[str]:
        """Answer checked ``questions[i]`` about loaded ``images[i]``, in batches: the loop training's
        ``--eval_generate`` runs too (vlm_core/generation.py), so both give the same answers."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InferenceInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        overrides = dict(generate_kwargs)
        settings = generation.greedy_settings(
            self.model, self.tokenizer, overrides.pop("max_new_tokens", generation.DEFAULT_MAX_NEW_TOKENS), **overrides)
        return generation.generate_answers(
            self.model, self.processor, self.family, self.prompt_format, self.frame, self.pad_fill, questions,
            images, batch_size, settings, pixel_dtype=self.dtype,
            check_lengths=functools.partial(self._check_lengths, max_new_tokens=settings.get("max_new_tokens")),
            drawn_boxes=drawn_boxes)

    def _check_lengths(self, lengths: list[int], offset: int, max_new_tokens: int | None = None) -> None:
        """Refuse a prompt that, with its answer, would run past the model's positions (it would
        answer garbage, or fail in the position embedding): cutting it would change the question.
        ``offset``: the index of ``lengths[0]`` in the call, so the refusal names the question."""
        for row, length in enumerate(lengths):
            if self.max_length and length + (max_new_tokens or 0) > self.max_length:
                raise InferenceInputError(
                    f"the prompt is {length} tokens (image included), which with max_new_tokens {max_new_tokens} "
                    f"exceeds the model's {self.max_length}-token context: shorten the question or ask for "
                    "fewer new tokens", offset + row)

    def _images(self, images: Iterable[Any]) -> list[Image.Image]:
        """Load every image once, even when a path repeats (several questions about one photo)."""
        cache: dict[str, Image.Image] = {}
        out = []
        for i, image in enumerate(images):
            key = os.fspath(image) if isinstance(image, (str, os.PathLike)) else None
            if key is None or key not in cache:
                try:
                    loaded = load_image(image)
                except InferenceInputError as e:
                    raise InferenceInputError(str(e), i) from None
                if key is not None:
                    cache[key] = loaded
            out.append(loaded if key is None else cache[key])
        return out

    # ------------------------------------------------------------------ public API
    def _region_items(self, items: Iterable[Any]) -> tuple[list[Image.Image], list[tuple[list[float], str | None]]]:
        """Each item's loaded image and checked box (and label): ``(image, bbox[, label])`` or a dict."""
        parsed = []
        for i, item in enumerate(items):
            if isinstance(item, dict) and "image" in item and "bbox" in item:
                parsed.append((item["image"], item["bbox"], item.get("label")))
            elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
                parsed.append((item[0], item[1], item[2] if len(item) == 3 else None))
            else:
                raise InferenceInputError(f"item {i}: expected (image, bbox[, label]) or a dict with 'image' "
                                          f"and 'bbox', got {item!r}", i)
        images = self._images(image for image, _, _ in parsed)
        boxes_labels = []
        for i, (img, (_, bbox, label)) in enumerate(zip(images, parsed)):
            try:
                boxes_labels.append((validate_bbox(bbox, *img.size), label))
            except InferenceInputError as e:
                raise InferenceInputError(str(e), i) from None
        return images, boxes_labels

    def describe_objects(self, items: Iterable[Any], batch_size: int = DEFAULT_BATCH_SIZE,
                         **generate_kwargs) -> list[str]:
        """Describe many boxes at once; each item is ``(image, bbox[, label])`` or a dict with those keys.

        Gives the same answers as :meth:`describe_object` called on each item.
        """
        images, boxes_labels = self._region_items(items)
        questions = [self.region_question(bbox, *img.size, label) for img, (bbox, label) in zip(images, boxes_labels)]
        drawn = [self.region_boxes(bbox) for bbox, _ in boxes_labels]
        return self._generate(questions, images, batch_size, generate_kwargs, drawn)

    def describe_object(self, image: Any, bbox: Sequence[float], label: str | None = None,
                        **generate_kwargs) -> str:
        """A short description of the object in ``bbox`` (pixels ``[x1, y1, x2, y2]`` of the displayed image)."""
        return self.describe_objects([(image, bbox, label)], batch_size=1, **generate_kwargs)[0]

    def label_question(self, bbox: Sequence[float], width: int, height: int) -> str:
        """"What is the object in this region: <box>? Answer with one word." (the region_label question), with
        visual box prompts "What is the object in the red box? ..."."""
        mode, templates = self.prompt_format.box_prompt, self.prompt_format.templates
        box = prompts.box_reference(mode, BOX_PROMPT_SLOTS[0], self.frame.render_box(bbox, width, height))
        template = (templates.get("region_label_visual", prompts.REGION_LABEL_VISUAL) if mode != "text"
                    else templates.get("region_label", prompts.REGION_LABEL))
        return template.format(box=box)

    def label_objects(self, items: Iterable[Any], batch_size: int = DEFAULT_BATCH_SIZE,
                      **generate_kwargs) -> list[str]:
        """What is in each box, in one word ("what is in this box?"); items as :meth:`describe_objects` takes
        them (a label, if given, is not used). Same answers as :meth:`label_object` on each item."""
        images, boxes_labels = self._region_items(items)
        questions = [self.label_question(bbox, *img.size) for img, (bbox, _) in zip(images, boxes_labels)]
        drawn = [self.region_boxes(bbox) for bbox, _ in boxes_labels]
        return self._generate(questions, images, batch_size, generate_kwargs, drawn)

    def label_object(self, image: Any, bbox: Sequence[float], **generate_kwargs) -> str:
        """The one-word name of the object in ``bbox`` (pixels ``[x1, y1, x2, y2]``): "what is in this box?"."""
        return self.label_objects([(image, bbox)], batch_size=1, **generate_kwargs)[0]

    def answer_questions(self, images: Any, questions: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE,
                         drawn_boxes: Sequence[list | None] | None = None, **generate_kwargs) -> list[str]:
        """Answer ``questions[i]`` about ``images[i]`` (or every question about one image), in batches.

        ``drawn_boxes[i]``: visual box prompts drawn on ``images[i]`` first (``[{"bbox": [x1, y1, x2, y2],
        "colour": "red"}]``, as a LLaVA record's ``box_prompt`` holds them; None: nothing drawn).
        Gives the same answers as :meth:`answer_question` called on each pair.
        """
        if isinstance(questions, str):
            raise InferenceInputError("questions must be a list of strings (use answer_question for one)")
        questions = [self.clean_question(q, i) for i, q in enumerate(questions)]
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images] * len(questions)
        images = list(images)
        if len(images) != len(questions):
            raise InferenceInputError(f"{len(images)} images for {len(questions)} questions")
        if drawn_boxes is not None:
            drawn_boxes = list(drawn_boxes)
            if len(drawn_boxes) != len(questions):
                raise InferenceInputError(f"{len(drawn_boxes)} drawn_boxes entries for {len(questions)} questions")
            for i, drawn in enumerate(drawn_boxes):
                if drawn is not None:
                    _checked_item(check_drawn_boxes, i, drawn, f"drawn_boxes[{i}]")
        return self._generate(questions, self._images(images), batch_size, generate_kwargs, drawn_boxes)

    def answer_question(self, image: Any, question: str, drawn_boxes: list | None = None, **generate_kwargs) -> str:
        """The model's answer to ``question`` about ``image`` (a path or a PIL image), ``drawn_boxes`` drawn on it."""
        return self.answer_questions([image], [question], batch_size=1,
                                     drawn_boxes=None if drawn_boxes is None else [drawn_boxes], **generate_kwargs)[0]

    def locate_objects(self, items: Iterable[Any], batch_size: int = DEFAULT_BATCH_SIZE,
                       **generate_kwargs) -> list[list[float] | None]:
        """Find many described objects at once; each item is ``(image, description)`` or a dict with those keys.
        Each box is in pixels of its displayed image, None where the answer holds no box; the same boxes as
        :meth:`locate` called on each item."""
        parsed = []
        for i, item in enumerate(items):
            if isinstance(item, dict) and "image" in item and "description" in item:
                parsed.append((item["image"], item["description"]))
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                parsed.append((item[0], item[1]))
            else:
                raise InferenceInputError(f"item {i}: expected (image, description) or a dict with 'image' and "
                                          f"'description', got {item!r}", i)
        questions = [self.grounding_question(description, i) for i, (_, description) in enumerate(parsed)]
        images = self._images(image for image, _ in parsed)
        answers = self._generate(questions, images, batch_size, generate_kwargs)
        return [self.frame.parse_box(answer, *img.size) for answer, img in zip(answers, images)]

    def locate(self, image: Any, description: str, **generate_kwargs) -> list[float] | None:
        """The box (pixels of the displayed image) the model gives for ``description``, or None."""
        return self.locate_objects([(image, description)], batch_size=1, **generate_kwargs)[0]


# ---------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--image", required=True, help="image file to ask about")
    ask = parser.add_mutually_exclusive_group(required=True)
    ask.add_argument("--question", help="a question about the image")
    ask.add_argument("--bbox", nargs=4, type=float, metavar=("X1", "Y1", "X2", "Y2"),
                     help="describe the object in this box (pixels of the displayed image)")
    ask.add_argument("--locate", metavar="TEXT", help="print the box (pixels) of the region TEXT describes")
    parser.add_argument("--label", default=None, help="class name of the object in --bbox (optional)")
    parser.add_argument("--bbox_normalized", action="store_true",
                        help="--bbox is in 0-1 fractions of the image's width and height, not pixels "
                             "(converted to pixels); without it a box whose values are all <= 1 is refused")
    args = parser.parse_args(argv)
    # Cheap checks first, so a typo does not wait for the model to load.
    check_model_args(args)
    if args.bbox_normalized and args.bbox is None:
        raise InputError("--bbox_normalized says how to read --bbox: give --bbox too")
    if Path(args.image).is_dir():
        raise InputError(folder_as_image_message(args.image, "--image"))
    runtime.require_path(args.image, "--image", "file")
    for flag in ("question", "locate"):
        if getattr(args, flag) is not None and not getattr(args, flag).strip():
            raise InputError(f"--{flag} is empty")
    return args


def load_model(args: argparse.Namespace) -> VLMInference:
    """The model that :func:`add_model_args`' flags name; a warning (asked another way than taught) is one line
    on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BoxPromptWarning)
        vlm = VLMInference(args.model_path, base_model=args.base_model, device=args.device, precision=args.precision,
                           load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit, box_prompt=args.box_prompt)
    for w in caught:
        if issubclass(w.category, BoxPromptWarning):
            print(f"warning: {w.message}", file=sys.stderr, flush=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return vlm


@runtime.report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    image = load_image(args.image)
    if args.bbox is not None:  # needs the image's size; checked before the model loads all the same
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            args.bbox = validate_bbox(args.bbox, *image.size, normalised=args.bbox_normalized,
                                      hint=", or pass --bbox_normalized")
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr, flush=True)
    vlm = load_model(args)
    if args.question is not None:
        result = vlm.answer_question(image, args.question, max_new_tokens=args.max_new_tokens)
    elif args.locate is not None:
        box = vlm.locate(image, args.locate, max_new_tokens=args.max_new_tokens)
        result = "none" if box is None else "[" + ", ".join(f"{v:.1f}" for v in box) + "]"
    else:
        result = vlm.describe_object(image, args.bbox, label=args.label, max_new_tokens=args.max_new_tokens)
    print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
