"""Stage 5: ask a fine-tuned LLaVA about one object (by its box) or anything about an image.

    python vlm_inference/vlm_inference.py --model_path vlm_model --base_model llava-hf/llava-1.5-7b-hf \\
        --image image.jpg --bbox 150 200 300 400 --label glass
    python vlm_inference/vlm_inference.py --model_path vlm_model --image image.jpg \\
        --question "How many objects are there?"

From Python:

    from vlm_inference.vlm_inference import VLMInference
    vlm = VLMInference(model_path="./vlm_model", base_model="llava-hf/llava-1.5-7b-hf")
    vlm.describe_object("image.jpg", bbox=[150, 200, 300, 400], label="glass")
    vlm.answer_question("image.jpg", "How many objects are there?")

``model_path`` may be what training wrote (a LoRA adapter: ``adapter_config.json``, put on
its base model, which is ``base_model`` or else the one the adapter names), a merged or
fully fine-tuned model (``config.json``), or a base model alone (a folder or a hub id).
The model is asked exactly as training taught it: the prompt format is read from
``model_path/prompt_format.json`` (a model without one gets the default LLaVA-1.5 format),
the image is padded to a square with the processor's mean colour, and boxes are written
with the shared box format. Decoding is greedy unless generation settings say otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image

from vlm_annotation import boxes, prompts
from vlm_annotation.images import ImageLoadError, as_rgb_image
from vlm_annotation.io_utils import InputError
from vlm_annotation.prompts import PROMPT_FORMAT_FILE, PromptFormat
from vlm_annotation.runtime import report_input_errors, require_model, resolve_device

ADAPTER_CONFIG_FILE = "adapter_config.json"
MODEL_CONFIG_FILE = "config.json"
TRAIN_ARGS_FILE = "train_args.json"
# Any of these in a folder means the processor (or at least its tokenizer) was saved there.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BATCH_SIZE = 8

_DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
                "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


class InferenceInputError(InputError, ValueError):
    """Bad input to :class:`VLMInference` (an image, a box, a question, a model path).

    A ``ValueError`` for library callers, and an ``InputError`` so the command lines report
    it as one line with exit code 2.
    """


def resolve_dtype(dtype: Any, device: str):
    """``None``/``"auto"`` -> bfloat16 (or float16) on a GPU, float32 on the CPU; names accepted."""
    import torch
    if dtype is None or dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.startswith("mps"):
            return torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_NAMES.get(str(dtype).lower().replace("torch.", ""))
    if name is None:
        raise InferenceInputError(f"dtype: unknown {dtype!r} (use auto, float32, float16 or bfloat16)")
    return getattr(torch, name)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _require_model(name: str, flag: str) -> str:
    try:
        return require_model(name, flag)
    except InputError as e:
        raise InferenceInputError(str(e)) from None


def validate_bbox(bbox: Any, width: int, height: int) -> list[float]:
    """Check a pixel box ``[x1, y1, x2, y2]`` and clip it to the image (warning when it had to).

    Raises :class:`InferenceInputError` for anything but four finite numbers, for reversed
    corners (``x2 < x1``) and for a box with no area inside the image.
    """
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise InferenceInputError(f"bbox must be four numbers [x1, y1, x2, y2], got {bbox!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InferenceInputError(f"bbox must be four finite numbers [x1, y1, x2, y2], got {bbox!r}")
    x1, y1, x2, y2 = values
    if x2 < x1:
        raise InferenceInputError(f"bbox {values}: x2 ({x2:g}) < x1 ({x1:g}); boxes are [x1, y1, x2, y2]")
    if y2 < y1:
        raise InferenceInputError(f"bbox {values}: y2 ({y2:g}) < y1 ({y1:g}); boxes are [x1, y1, x2, y2]")
    clipped = [float(v) for v in boxes.clip_box(values, width, height)]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        where = "has no area" if (x2 == x1 or y2 == y1) else f"lies outside the {width}x{height} image"
        raise InferenceInputError(f"bbox {values} {where}")
    if clipped != values:
        warnings.warn(f"bbox {values} goes outside the {width}x{height} image; clipped to "
                      f"{[round(float(v), 2) for v in clipped]}", UserWarning, stacklevel=3)
    return clipped


class VLMInference:
    """A LLaVA model (adapter, merged, full or base) loaded once, asked about images and boxes."""

    def __init__(self, model_path: str | os.PathLike, base_model: str | None = None, device: str | None = None,
                 dtype: Any = None, load_in_8bit: bool = False, load_in_4bit: bool = False):
        try:
            self.device = resolve_device(device or "auto")
        except InputError as e:
            raise InferenceInputError(str(e)) from None
        if load_in_8bit and load_in_4bit:
            raise InferenceInputError("choose one of load_in_8bit and load_in_4bit")
        self.quantized = bool(load_in_8bit or load_in_4bit)
        if self.quantized and not self.device.startswith("cuda"):
            raise InferenceInputError(
                f"{'load_in_8bit' if load_in_8bit else 'load_in_4bit'} needs a CUDA GPU (bitsandbytes); "
                f"the device here is {self.device}: load without quantization instead")
        self.dtype = resolve_dtype(dtype, self.device)

        self.model_path = str(model_path)
        local = Path(model_path).expanduser()
        self.local_dir = local if local.is_dir() else None
        if self.local_dir is not None and (local / ADAPTER_CONFIG_FILE).is_file():
            self.kind = "adapter"
            self.base_model = self._adapter_base(local, base_model)
            weights_source, weights_flag = self.base_model, "--base_model"
        elif self.local_dir is not None:
            if not (local / MODEL_CONFIG_FILE).is_file():
                raise InferenceInputError(
                    f"--model_path: {local} holds neither a LoRA adapter ({ADAPTER_CONFIG_FILE}) "
                    f"nor a model ({MODEL_CONFIG_FILE})")
            self.kind = "model"
            self.base_model = None  # a merged / full / base model needs no base
            weights_source, weights_flag = str(local), "--model_path"
        else:
            self.kind = "model"
            self.base_model = None
            weights_source, weights_flag = _require_model(str(model_path), "--model_path"), "--model_path"

        # The small files first: a bad prompt format or processor fails before the weights load.
        self.prompt_format = self._load_prompt_format()
        processor_source = str(local) if self._has_processor(self.local_dir) else (self.base_model or
                                                                                   self.model_path)
        self.processor = self._load_processor(processor_source)
        self.tokenizer = self.processor.tokenizer
        # Generation appends after the prompt, so every prompt of a batch must end at the right edge.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        mean = getattr(self.processor.image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        self.pad_fill = tuple(float(v) for v in mean)

        self.model = self._load_model(weights_source, weights_flag, load_in_8bit, load_in_4bit)
        if self.kind == "adapter":
            self.model = self._attach_adapter(self.model, local)
        if not self.quantized:
            self.model.to(self.device)
        self.model.eval()

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _has_processor(directory: Path | None) -> bool:
        return directory is not None and any((directory / f).is_file() for f in PROCESSOR_FILES)

    @staticmethod
    def _adapter_base(adapter_dir: Path, base_model: str | None) -> str:
        if base_model:
            return _require_model(str(base_model), "--base_model")
        named = None
        try:
            named = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8")).get(
                "base_model_name_or_path")
            if not named and (adapter_dir / TRAIN_ARGS_FILE).is_file():
                named = json.loads((adapter_dir / TRAIN_ARGS_FILE).read_text(encoding="utf-8")).get("base_model")
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise InferenceInputError(f"{adapter_dir / ADAPTER_CONFIG_FILE}: unreadable: {_first_line(e)}") from None
        if not named:
            raise InferenceInputError(f"--model_path {adapter_dir} is a LoRA adapter that names no base model: "
                                      "pass --base_model")
        try:
            return _require_model(str(named), "--base_model")
        except InputError:
            raise InferenceInputError(f"the adapter in {adapter_dir} was trained on {named}, which is not found "
                                      "here: pass --base_model") from None

    def _load_model(self, source: str, flag: str, load_in_8bit: bool, load_in_4bit: bool):
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
        except (OSError, ValueError, KeyError) as e:
            raise InferenceInputError(f"{flag}: cannot load a vision-language model from {source}: "
                                      f"{_first_line(e)}") from None

    def _attach_adapter(self, model, adapter_dir: Path):
        from peft import PeftModel
        with warnings.catch_warnings():
            # peft 0.21 still calls transformers' deprecated is_gradient_checkpointing: noise for users.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            try:
                model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
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

    def _load_prompt_format(self) -> PromptFormat:
        if self.local_dir is None:
            return PromptFormat()
        try:
            return PromptFormat.load(self.local_dir)
        except (ValueError, TypeError, OSError) as e:
            raise InferenceInputError(f"{self.local_dir / PROMPT_FORMAT_FILE}: {_first_line(e)}") from None

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def load_image(image: Any) -> Image.Image:
        """A path or a PIL image -> RGB PIL in displayed orientation; clear errors otherwise."""
        if isinstance(image, (str, os.PathLike)):
            if not Path(image).is_file():
                raise InferenceInputError(f"image not found: {image}")
        elif not isinstance(image, Image.Image):
            raise InferenceInputError(f"image must be a file path or a PIL image, got {type(image).__name__}")
        try:
            return as_rgb_image(image)
        except ImageLoadError as e:
            raise InferenceInputError(f"image {image}: {e}") from None

    def clean_question(self, question: Any) -> str:
        """The question as the model will read it: stripped, without a leading image token."""
        if not isinstance(question, str):
            raise InferenceInputError(f"question must be text, got {type(question).__name__}")
        text = question.strip()
        token = self.prompt_format.image_token
        if text.startswith(token):  # a question copied from a LLaVA file ("<image>\nQ")
            text = text[len(token):].strip()
        if not text:
            raise InferenceInputError("question is empty")
        if token in text:
            raise InferenceInputError(f"question must not contain the image token {token}: {question!r}")
        return text

    def region_question(self, bbox: Sequence[float], width: int, height: int, label: str | None = None) -> str:
        """The question that asks for a description of ``bbox`` (pixels of a ``width`` x ``height`` image)."""
        box_text = boxes.box_to_text(bbox, width, height, decimals=self.prompt_format.box_decimals)
        templates = self.prompt_format.templates
        if label is not None and str(label).strip():
            template = templates.get("region_description_labeled", prompts.REGION_DESCRIPTION_LABELED)
            return template.format(label=str(label).strip(), box=box_text)
        return templates.get("region_description", prompts.REGION_DESCRIPTION).format(box=box_text)

    def grounding_question(self, description: str) -> str:
        text = self.clean_question(description)
        return self.prompt_format.templates.get("grounding", prompts.GROUNDING).format(text=text)

    def model_image(self, image: Image.Image) -> Image.Image:
        """What the model sees: the image padded to a square in the processor's mean colour."""
        if self.prompt_format.pad_to_square:
            return boxes.pad_to_square(image, self.pad_fill)
        return image

    # ------------------------------------------------------------------ generation
    def _generate(self, questions: list[str], images: list[Image.Image], batch_size: int,
                  generate_kwargs: dict) -> list[str]:
        """Answer ``questions[i]`` about ``images[i]`` (already displayed-orientation RGB), in batches."""
        import torch
        if batch_size < 1:
            raise InferenceInputError(f"batch_size must be >= 1, got {batch_size}")
        settings = {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "do_sample": False, "num_beams": 1}
        settings.update(generate_kwargs)
        if getattr(self.model.generation_config, "pad_token_id", None) is None:
            settings.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        answers: list[str] = []
        for start in range(0, len(questions), batch_size):
            texts = [self.prompt_format.prompt(q, first=True) for q in questions[start:start + batch_size]]
            pixels = [self.model_image(img) for img in images[start:start + batch_size]]
            inputs = self.processor(images=pixels, text=texts, padding=True, return_tensors="pt")
            inputs = inputs.to(self.model.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            with torch.inference_mode():
                output = self.model.generate(**inputs, **settings)
            # Decoder-only generation returns prompt + answer; with left padding every prompt
            # ends at the same column, so the answer is everything after it.
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            answers.extend(text.strip() for text in decoded)
        return answers

    def _images(self, images: Iterable[Any]) -> list[Image.Image]:
        """Load every image once, even when a path repeats (several questions about one photo)."""
        cache: dict[str, Image.Image] = {}
        out = []
        for image in images:
            if isinstance(image, (str, os.PathLike)):
                key = os.fspath(image)
                if key not in cache:
                    cache[key] = self.load_image(image)
                out.append(cache[key])
            else:
                out.append(self.load_image(image))
        return out

    # ------------------------------------------------------------------ public API
    def describe_objects(self, items: Iterable[Any], batch_size: int = DEFAULT_BATCH_SIZE,
                         **generate_kwargs) -> list[str]:
        """Describe many boxes at once; each item is ``(image, bbox[, label])`` or a dict with those keys.

        Gives the same answers as :meth:`describe_object` called on each item.
        """
        parsed = []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                if "image" not in item or "bbox" not in item:
                    raise InferenceInputError(f"item {i}: needs 'image' and 'bbox'")
                parsed.append((item["image"], item["bbox"], item.get("label")))
            elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
                parsed.append((item[0], item[1], item[2] if len(item) == 3 else None))
            else:
                raise InferenceInputError(f"item {i}: expected (image, bbox[, label]) or a dict, got {item!r}")
        images = self._images(image for image, _, _ in parsed)
        questions = []
        for img, (_, bbox, label) in zip(images, parsed):
            width, height = img.size
            questions.append(self.region_question(validate_bbox(bbox, width, height), width, height, label))
        return self._generate(questions, images, batch_size, generate_kwargs)

    def describe_object(self, image: Any, bbox: Sequence[float], label: str | None = None,
                        **generate_kwargs) -> str:
        """A short description of the object in ``bbox`` (pixels ``[x1, y1, x2, y2]`` of the displayed image)."""
        return self.describe_objects([(image, bbox, label)], batch_size=1, **generate_kwargs)[0]

    def answer_questions(self, images: Any, questions: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE,
                         **generate_kwargs) -> list[str]:
        """Answer ``questions[i]`` about ``images[i]`` (or every question about one image), in batches.

        Gives the same answers as :meth:`answer_question` called on each pair.
        """
        if isinstance(questions, str):
            raise InferenceInputError("questions must be a list of strings (use answer_question for one)")
        questions = [self.clean_question(q) for q in questions]
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images] * len(questions)
        images = list(images)
        if len(images) != len(questions):
            raise InferenceInputError(f"{len(images)} images for {len(questions)} questions")
        return self._generate(questions, self._images(images), batch_size, generate_kwargs)

    def answer_question(self, image: Any, question: str, **generate_kwargs) -> str:
        """The model's answer to ``question`` about ``image`` (a path or a PIL image)."""
        return self.answer_questions([image], [question], batch_size=1, **generate_kwargs)[0]

    def locate(self, image: Any, description: str, **generate_kwargs) -> list[float] | None:
        """The box (pixels of the displayed image) the model gives for ``description``, or None."""
        img = self.load_image(image)
        answer = self._generate([self.grounding_question(description)], [img], 1, generate_kwargs)[0]
        return boxes.text_to_box(answer, *img.size)


# ---------------------------------------------------------------------- command line
def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The flags that say which model to load and how (shared with predict.py)."""
    parser.add_argument("--model_path", required=True,
                        help="training output (LoRA adapter), a merged/full model folder, or a base model / hub id")
    parser.add_argument("--base_model", default=None,
                        help="base model for a LoRA adapter (default: the one named in its adapter_config.json)")
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"most tokens per answer (default {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto",
                        help="auto (bf16/fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")
    quant = parser.add_mutually_exclusive_group()
    quant.add_argument("--load_in_8bit", action="store_true", help="load the weights in 8 bits (CUDA only)")
    quant.add_argument("--load_in_4bit", action="store_true", help="load the weights in 4 bits (CUDA only)")


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
    return parser.parse_args(argv)


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.max_new_tokens < 1:
        raise InputError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if not Path(args.image).is_file():
        raise InputError(f"--image: file not found: {args.image}")
    # Cheap checks first, so a typo does not wait for the model to load.
    _require_model(args.model_path, "--model_path")
    if args.question is not None and not args.question.strip():
        raise InputError("--question is empty")
    if args.locate is not None and not args.locate.strip():
        raise InputError("--locate is empty")
    if args.bbox is not None:
        x1, y1, x2, y2 = args.bbox
        if x2 < x1 or y2 < y1:
            raise InputError(f"--bbox {x1:g} {y1:g} {x2:g} {y2:g}: need x1 <= x2 and y1 <= y2 (X1 Y1 X2 Y2)")
    image = VLMInference.load_image(args.image)
    if args.bbox is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the clipping warning is shown once, below
            validate_bbox(args.bbox, *image.size)
    vlm = VLMInference(args.model_path, base_model=args.base_model, device=args.device, dtype=args.dtype,
                       load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        if args.question is not None:
            result = vlm.answer_question(image, args.question, max_new_tokens=args.max_new_tokens)
        elif args.locate is not None:
            box = vlm.locate(image, args.locate, max_new_tokens=args.max_new_tokens)
            result = "none" if box is None else "[" + ", ".join(f"{v:.1f}" for v in box) + "]"
        else:
            result = vlm.describe_object(image, args.bbox, label=args.label, max_new_tokens=args.max_new_tokens)
    for w in caught:
        if issubclass(w.category, UserWarning) and str(w.message).startswith("bbox"):
            print(f"warning: {w.message}", file=sys.stderr, flush=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
