"""VLM families: which one a base model is, how it writes a box, and how its chat is laid out.

One definition per family, torch-free. The pixel box of the annotation file (``[x1, y1, x2, y2]``
in the displayed image) is the truth; every family's box text is rendered from it and parsed
back to it here, in the frame the family was trained with:

================  =================================  ==========================================================
family            box text (question / answer)       frame
================  =================================  ==========================================================
llava (1.5)       ``[0.12, 0.34, 0.56, 0.78]``       0..1 of the image padded (centred) to a square, 2 decimals
vip_llava         ``[0.12, 0.34, 0.56, 0.78]``       0..1 of the image padded (centred) to a square, 2 decimals
llava_next        ``[0.12, 0.34, 0.56, 0.78]``       0..1 of the original image, 2 decimals
llava_onevision   ``[0.12, 0.34, 0.56, 0.78]``       0..1 of the original image, 2 decimals
qwen2_vl          ``<|box_start|>(x1,y1),(x2,y2)``   integers 0..1000 of the original image
                  ``<|box_end|>``
qwen2_5_vl        ``[x1, y1, x2, y2]`` /             integer pixels of the image after the processor's
                  ``{"bbox_2d": [..], "label": ..}``  ``smart_resize`` (multiples of 28 within min/max_pixels)
qwen3_vl          ``[x1, y1, x2, y2]`` /             integers 0..1000 of the original image
                  ``{"bbox_2d": [..], "label": ..}``
================  =================================  ==========================================================

Sources (read with the search tool; the installed transformers is 5.24):

- LLaVA-1.5: boxes are normalised to the image padded to a square with the processor's mean
  (haotian-liu/LLaVA issue #606, "[Question] About the bounding box of the VG data"; the training
  code's ``expand2square``); region prompts from its instruction mix. Chat template of
  llava-hf/llava-1.5-7b-hf (``USER: <image>\\nQ ASSISTANT: A``, no EOS after the answer).
- ViP-LLaVA: LLaVA-1.5's code and data with visual prompts drawn on the image. Its instruction mix is
  LLaVA-1.5's 665K (whose boxes are the padded square's 0..1) plus region data that marks objects by
  drawing, never by numbers (WisconsinAIVision/ViP-LLaVA ``README.md``, ``llava/visual_prompt_organizer.py``),
  and it trains with ``--image_aspect_ratio pad`` (``scripts/finetune_stage2.sh``, ``finetune_stage3.sh``):
  ``expand2square`` in the image mean (``llava/mm_utils.py``). So its frame is LLaVA-1.5's, recorded as
  its own family. Its repository trains with LLaVA v1's ``USER: ... ASSISTANT:`` layout
  (``--version llava_v1``, ``llava/conversation.py``), but the hub checkpoint's chat template and model
  card write ``###Human: <image>\\nQ###Assistant:`` (a system message as bare text before it), which
  transformers' own test expects (``tests/models/vipllava/test_processor_vipllava.py``): the toolkit
  asks through that template (llava-hf/vip-llava-7b-hf ``chat_template.json``), with the tokenizer's
  ``</s>`` after answers, since the template writes none. Its processor is a LlavaProcessor whose
  image-token count drops CLS (``num_additional_image_tokens`` 1, strategy ``default``), as
  ``VipLlavaModel.get_image_features`` takes ``hidden_states[layer][:, 1:]`` of five CLIP layers.
- LLaVA-NeXT / OneVision: the processor never pads to a square: the base view is the whole image
  resized to a square and the high-resolution grid is un-padded by the model
  (transformers ``models/llava_next/image_processing_llava_next.py`` ``_get_image_patches``,
  ``modeling_llava_next.py`` ``unpad_image``), and the team's own evaluation harness scores
  grounding with boxes "normalized ... using the image width and height" of the original image,
  asked as "[x1, y1, x2, y2]" floats in 0..1 (EvolvingLMMs-Lab/lmms-eval
  ``lmms_eval/tasks/refcoco/utils_rec.py``). Chat template of llava-hf/llava-v1.6-mistral-7b-hf
  (``[INST] <image>\\nQ [/INST] A</s>``).
- Qwen2-VL: ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``, ``<|object_ref_start|>..<|object_ref_end|>``
  for the referred phrase (modelscope/ms-swift ``swift/llm/template/template/qwen.py``
  ``Qwen2VLTemplate.replace_bbox/replace_ref``); coordinates ``round(x / w * 1000)`` clipped to
  [0, 1000] (QwenLM/Qwen3-VL ``qwen-vl-finetune/tools/process_bbox.ipynb``
  ``convert_to_qwen2vl_format``).
- Qwen2.5-VL: "absolute coordinates for the resized image": ``round(x * new_w / w)`` with
  ``new_h, new_w = smart_resize(h, w, factor=28, min_pixels, max_pixels)`` (same notebook,
  ``convert_to_qwen25vl_format``; transformers ``models/qwen2_vl/image_processing_qwen2_vl.py``
  ``smart_resize``, which Qwen2.5-VL's processor uses); answers as JSON
  ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` (``qwen-vl-finetune/README.md``, grounding example).
- Qwen3-VL: "relative coordinates ranging from 0 to 1000" of the original image, JSON
  ``{"bbox_2d": [...], "label": ...}`` (QwenLM/Qwen3-VL ``cookbooks/2d_grounding.ipynb``); a box
  in a question is written ``[x1, y1, x2, y2]`` (QwenLM/Qwen3-VL issue #1427, the Qwen team's
  answer). Its processor resizes to multiples of 32 (patch 16, merge 2), which does not move a
  relative frame.
- Back to pixels, Qwen's own evaluation (QwenLM/Qwen3-VL ``evaluation/ODinW-13/run_odinw.py``):
  ``v / 1000 * img_w`` (relative frames), ``v / resized_w * img_w`` (Qwen2.5-VL). Conversion and parsing
  compute in the official order, so their numbers equal the official ones exactly, rounding ties included
  (``tests/test_frames_official.py`` names each source and commit).
- Qwen chat layout: ``<|im_start|>role\\n...<|im_end|>\\n``; the official fine-tuning code supervises
  the answer through ``<|im_end|>`` (``qwen-vl-finetune/qwenvl/data/data_processor.py``).

A box frame is a small serialisable dict (:meth:`BoxFrame.to_dict`) saved with the model
(``box_frame.json``) and recorded in every LLaVA-format record (``"box_frame"``), so data
rendered for one family or resize setting is refused by another (:func:`check_frame`).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from vlm_core import boxes
from vlm_core.boxes import first_box  # also what vlm_core.predictions imports from here
from vlm_core.model_dir import ADAPTER_CONFIG_FILE, FRAME_FILE, MODEL_CONFIG_FILE
from vlm_core.prompts import IMAGE_TOKEN, PromptFormat

FRAME_KEY = "box_frame"          # key of the frame dict in a LLaVA-format record
DEFAULT_BASE_MODEL = "llava-hf/llava-1.5-7b-hf"


class FamilyError(ValueError):
    """A base model or a recorded frame that cannot be used; the message is one line."""


# --------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    """Everything the toolkit needs to know about one VLM family."""
    name: str
    title: str
    model_types: tuple[str, ...]        # config.json "model_type"
    id_pattern: str                     # regex (case-insensitive) on a hub id, for offline detection
    example_id: str
    model_class: str                    # transformers class (AutoModelForImageTextToText maps to it too)
    processor_class: str
    frame_kind: str                     # padded_square | unit | norm1000 | resized_pixels
    question_style: str                 # list | qwen2 | int_list
    answer_style: str                   # list | qwen2 | json
    image_placeholder: str              # what the chat template writes for one image
    end_of_turn: str | None             # None: the tokenizer's EOS
    # LLaVA-1.5 only: turns are laid out by the toolkit's PromptFormat (its chat template's layout, plus EOS
    # after answers and LLaVA v1's system prompt); every other family is asked through its chat template.
    uses_prompt_format: bool = False
    decimals: int = 2                   # for the 0..1 frames
    # Resize settings of the official checkpoints, used only when no processor config is at hand.
    default_resize: dict | None = None
    keep_tokens: tuple[str, ...] = ()         # special tokens that belong to an answer (Qwen2-VL's box tokens)
    vision_prefixes: tuple[str, ...] = ()     # module/parameter-name prefixes of the vision tower (frozen)
    projector_prefixes: tuple[str, ...] = ()  # the vision-language connector (trainable on request)
    sources: tuple[str, ...] = field(default_factory=tuple)
    # The system prompt --system_prompt auto gives a family asked through its chat template: the one its checkpoint
    # was tuned with, where its model card names one ("" none). LLaVA-1.5's is PromptFormat's (prompts.py).
    default_system_prompt: str = ""

    @property
    def pad_to_square(self) -> bool:
        """Whether the toolkit pads the family's images to a square (its frame is the padded square)."""
        return self.frame_kind == "padded_square"

    @property
    def lora_target_regex(self) -> str:
        """LoRA on the language model only: a suffix list would also hit the vision tower."""
        return LANGUAGE_LORA_REGEX


# peft matches a string target_modules with re.fullmatch; train_args.json and adapter_config.json record it.
LANGUAGE_LORA_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

# The sentence before "###Human:" in the template llava-hf/vip-llava-7b-hf's model card recommends "according to the
# official code base" (LLaVA v1's, with "human" where LLaVA-1.5's says "user").
VIP_LLAVA_SYSTEM_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. "
                           "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_QWEN_RESIZE_28 = {"factor": 28, "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}
_LLAVA_VISION = (("model.vision_tower",), ("model.multi_modal_projector",))

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llava", "LLaVA-1.5", ("llava",), r"llava", "llava-hf/llava-1.5-7b-hf",
           "LlavaForConditionalGeneration", "LlavaProcessor", "padded_square", "list", "list",
           IMAGE_TOKEN + "\n", None, uses_prompt_format=True,
           vision_prefixes=_LLAVA_VISION[0], projector_prefixes=_LLAVA_VISION[1],
           sources=("haotian-liu/LLaVA issue #606", "llava-hf/llava-1.5-7b-hf chat_template.json")),
    # ViP-LLaVA: LLaVA-1.5's frame (its data mix and expand2square), asked through its checkpoint's chat
    # template "###Human: <image>\nQ###Assistant:" (see the module docstring for the sources).
    Family("vip_llava", "ViP-LLaVA", ("vipllava",), r"vip[-_]?llava", "llava-hf/vip-llava-7b-hf",
           "VipLlavaForConditionalGeneration", "LlavaProcessor", "padded_square", "list", "list",
           IMAGE_TOKEN + "\n", None,
           vision_prefixes=_LLAVA_VISION[0], projector_prefixes=_LLAVA_VISION[1],
           sources=("WisconsinAIVision/ViP-LLaVA scripts/finetune_stage2.sh (--image_aspect_ratio pad)",
                    "WisconsinAIVision/ViP-LLaVA llava/mm_utils.py expand2square",
                    "llava-hf/vip-llava-7b-hf chat_template.json",
                    "transformers tests/models/vipllava/test_processor_vipllava.py",
                    "llava-hf/vip-llava-7b-hf README.md (the recommended template's system sentence)"),
           default_system_prompt=VIP_LLAVA_SYSTEM_PROMPT),
    Family("llava_next", "LLaVA-NeXT", ("llava_next",), r"llava[-_]?v?1[._]6|llava[-_]?next",
           "llava-hf/llava-v1.6-mistral-7b-hf", "LlavaNextForConditionalGeneration", "LlavaNextProcessor",
           "unit", "list", "list", IMAGE_TOKEN + "\n", None,
           vision_prefixes=_LLAVA_VISION[0], projector_prefixes=_LLAVA_VISION[1] + ("model.image_newline",),
           sources=("transformers models/llava_next/image_processing_llava_next.py",
                    "EvolvingLMMs-Lab/lmms-eval lmms_eval/tasks/refcoco/utils_rec.py",
                    "llava-hf/llava-v1.6-mistral-7b-hf chat_template.json")),
    Family("llava_onevision", "LLaVA-OneVision", ("llava_onevision",), r"onevision|llava[-_]?ov",
           "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "LlavaOnevisionForConditionalGeneration",
           "LlavaOnevisionProcessor", "unit", "list", "list", IMAGE_TOKEN, "<|im_end|>",
           vision_prefixes=_LLAVA_VISION[0], projector_prefixes=_LLAVA_VISION[1] + ("model.image_newline",),
           sources=("transformers models/llava_onevision/image_processing_llava_onevision.py",
                    "EvolvingLMMs-Lab/lmms-eval lmms_eval/tasks/refcoco/utils_rec.py",
                    "transformers tests/models/llava_onevision/test_processing_llava_onevision.py (template)")),
    Family("qwen2_vl", "Qwen2-VL", ("qwen2_vl",), r"qwen2[-_]?vl", "Qwen/Qwen2-VL-2B-Instruct",
           "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "norm1000", "qwen2", "qwen2",
           "<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>",
           default_resize=dict(_QWEN_RESIZE_28), vision_prefixes=("model.visual",),
           projector_prefixes=("model.visual.merger",),
           keep_tokens=("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"),
           sources=("modelscope/ms-swift swift/llm/template/template/qwen.py",
                    "QwenLM/Qwen3-VL qwen-vl-finetune/tools/process_bbox.ipynb")),
    Family("qwen2_5_vl", "Qwen2.5-VL", ("qwen2_5_vl",), r"qwen2[._]?5[-_]?vl", "Qwen/Qwen2.5-VL-3B-Instruct",
           "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "resized_pixels", "int_list", "json",
           "<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>",
           default_resize=dict(_QWEN_RESIZE_28), vision_prefixes=("model.visual",),
           projector_prefixes=("model.visual.merger",),
           sources=("QwenLM/Qwen3-VL qwen-vl-finetune/tools/process_bbox.ipynb",
                    "QwenLM/Qwen3-VL qwen-vl-finetune/README.md",
                    "transformers models/qwen2_vl/image_processing_qwen2_vl.py smart_resize")),
    Family("qwen3_vl", "Qwen3-VL", ("qwen3_vl",), r"qwen3[-_]?vl", "Qwen/Qwen3-VL-2B-Instruct",
           "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "norm1000", "int_list", "json",
           "<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>",
           default_resize={"factor": 32, "min_pixels": 65536, "max_pixels": 16777216},
           vision_prefixes=("model.visual",), projector_prefixes=("model.visual.merger",
                                                                  "model.visual.deepstack_merger_list"),
           sources=("QwenLM/Qwen3-VL cookbooks/2d_grounding.ipynb", "QwenLM/Qwen3-VL issue #1427")),
)}

# Hub ids are matched most specific first (a "llava-onevision" or "vip-llava" id also contains "llava").
_ID_ORDER = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl", "vip_llava", "llava_onevision", "llava_next", "llava")
_MODEL_TYPE_TO_FAMILY = {t: f.name for f in FAMILIES.values() for t in f.model_types}


def supported() -> str:
    return ", ".join(f"{f.name} ({f.title}, e.g. {f.example_id})" for f in FAMILIES.values())


def family_named(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r}; supported: {', '.join(FAMILIES)}") from None


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cached_hub_file(repo_id: str, filename: str) -> Path | None:
    """A file of a hub model from the local cache only (never the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an id that is not a valid repo name
        return None
    return Path(found) if isinstance(found, str) else None


def _model_type(config: dict | None) -> str | None:
    if not config:
        return None
    mtype = config.get("model_type")
    return mtype if isinstance(mtype, str) else None


def detect_family(base_model: str | os.PathLike) -> Family:
    """The family of a base model: a local folder (its config.json, or the box frame a trained
    model saved, or the base of a LoRA adapter) or a hub id (its cached config.json, else the id)."""
    text = str(base_model)
    path = Path(text)
    if path.is_dir():
        saved = _read_json(path / FRAME_FILE)
        if saved and isinstance(saved.get("family"), str):
            return family_named(saved["family"])
        mtype = _model_type(_read_json(path / MODEL_CONFIG_FILE))
        if mtype is None:
            adapter = _read_json(path / ADAPTER_CONFIG_FILE)
            base = adapter.get("base_model_name_or_path") if adapter else None
            if isinstance(base, str) and base and Path(base).resolve() != path.resolve():
                return detect_family(base)
            raise FamilyError(f"{path}: no config.json with a model_type (is this a model folder?)")
        if mtype in _MODEL_TYPE_TO_FAMILY:
            return FAMILIES[_MODEL_TYPE_TO_FAMILY[mtype]]
        raise FamilyError(f"{path}: model_type {mtype!r} is not a supported family; supported: {supported()}")
    cached = _cached_hub_file(text, MODEL_CONFIG_FILE)
    mtype = _model_type(_read_json(cached)) if cached else None
    if mtype in _MODEL_TYPE_TO_FAMILY:
        return FAMILIES[_MODEL_TYPE_TO_FAMILY[mtype]]
    if mtype is not None:  # the cached config knows better than the name
        raise FamilyError(f"{text}: model_type {mtype!r} is not a supported family; supported: {supported()}")
    for name in _ID_ORDER:
        if re.search(FAMILIES[name].id_pattern, text, flags=re.IGNORECASE):
            return FAMILIES[name]
    raise FamilyError(f"cannot tell the model family of {text!r}; supported: {supported()}")


# --------------------------------------------------------------------------- resize
def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule, as transformers 5 implements it
    (``models/qwen2_vl/image_processing_qwen2_vl.py``): sides multiples of ``factor``, area within
    [min_pixels, max_pixels], aspect ratio kept as closely as the rounding allows."""
    if min(height, width) <= 0:
        raise FamilyError(f"image size {width}x{height} is empty")
    if max(height, width) / min(height, width) > 200:
        raise FamilyError(f"image {width}x{height}: aspect ratio above 200, which Qwen's processor refuses")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _get(obj, key):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def resize_settings(image_processor) -> dict:
    """``{"factor", "min_pixels", "max_pixels"}`` of a Qwen image processor, or of its saved config dict."""
    size = _get(image_processor, "size") or {}
    min_pixels = _get(size, "shortest_edge") or _get(image_processor, "min_pixels")
    max_pixels = _get(size, "longest_edge") or _get(image_processor, "max_pixels")
    patch, merge = _get(image_processor, "patch_size"), _get(image_processor, "merge_size")
    if not all(isinstance(v, int) and v > 0 for v in (min_pixels, max_pixels, patch, merge)):
        raise FamilyError(f"image processor has no usable resize settings (size={size!r}, "
                          f"patch_size={patch!r}, merge_size={merge!r})")
    return {"factor": patch * merge, "min_pixels": int(min_pixels), "max_pixels": int(max_pixels)}


def _saved_image_processor(folder: Path) -> dict | None:
    proc = _read_json(folder / "processor_config.json")
    if proc and isinstance(proc.get("image_processor"), dict):
        return proc["image_processor"]
    return _read_json(folder / "preprocessor_config.json")


# --------------------------------------------------------------------------- frames
_FRAME_FIELDS = {"family", "kind", "decimals", "factor", "min_pixels", "max_pixels"}


@dataclass(frozen=True)
class BoxFrame:
    """The coordinate frame and wording of one family's boxes (serialisable, saved with the model)."""
    family: str
    kind: str
    decimals: int | None = None
    factor: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None

    # ---- identity
    @property
    def spec(self) -> Family:
        return family_named(self.family)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data, where: str = "box frame") -> "BoxFrame":
        if not isinstance(data, dict):
            raise FamilyError(f"{where}: must be an object, got {type(data).__name__}")
        unknown = set(data) - _FRAME_FIELDS
        if unknown:
            raise FamilyError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        if not isinstance(data.get("family"), str):
            raise FamilyError(f"{where}: field 'family' is missing or not a string")
        if data["family"] not in FAMILIES:
            raise FamilyError(f"{where}: unknown model family {data['family']!r}; supported: {', '.join(FAMILIES)}")
        fam = FAMILIES[data["family"]]
        if not isinstance(data.get("kind"), str):
            raise FamilyError(f"{where}: field 'kind' is missing or not a string")
        for key in ("decimals", "factor", "min_pixels", "max_pixels"):
            value = data.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise FamilyError(f"{where}: field {key!r} must be an integer, got {value!r}")
        frame = cls(**data)
        if frame.kind != fam.frame_kind:
            raise FamilyError(f"{where}: kind {frame.kind!r} is not the {fam.name} frame ({fam.frame_kind!r})")
        if fam.frame_kind == "resized_pixels":
            frame._resize()  # validates
        elif frame != frame_for_family(fam):
            raise FamilyError(f"{where}: {frame.to_dict()} is not the {fam.name} frame "
                              f"{frame_for_family(fam).to_dict()}")
        return frame

    def _resize(self) -> dict:
        vals = {"factor": self.factor, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in vals.values()):
            raise FamilyError(f"{self.family} frame needs positive integers factor, min_pixels, max_pixels; "
                              f"got {vals}")
        if vals["min_pixels"] > vals["max_pixels"]:
            raise FamilyError(f"{self.family} frame: min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        return vals

    def describe(self) -> str:
        what = {
            "padded_square": f"0..1 of the image padded to a square, {self.decimals} decimals",
            "unit": f"0..1 of the original image, {self.decimals} decimals",
            "norm1000": "integers 0..1000 of the original image",
            "resized_pixels": (f"pixels of the image after smart_resize (factor {self.factor}, "
                               f"min_pixels {self.min_pixels}, max_pixels {self.max_pixels})"),
        }[self.kind]
        return f"{self.family} [{what}]"

    # ---- geometry: pixels of the original image <-> frame numbers
    def frame_size(self, width: float, height: float) -> tuple[float, float]:
        """Extent of the frame along x and y (what 0..extent covers)."""
        if self.kind in ("padded_square", "unit"):
            return 1.0, 1.0
        if self.kind == "norm1000":
            return 1000.0, 1000.0
        resized_h, resized_w = smart_resize(int(round(height)), int(round(width)), **self._resize())
        return float(resized_w), float(resized_h)

    def to_frame(self, box: Sequence[float], width: float, height: float) -> list:
        """A pixel box as the numbers the model reads (rounded and clipped to the frame)."""
        if self.kind == "padded_square":
            # LLaVA-1.5's numbers are boxes.box_to_text's: the padded square's 0..1, clamped to the square
            # (a box over the image edge by the annotation's rounding tolerance is not clipped first).
            vals = boxes.pixel_to_square(box, width, height)
        else:
            box = boxes.clip_box(box, width, height)
            fw, fh = self.frame_size(width, height)
            if self.kind == "resized_pixels":
                # The scale first, as convert_to_qwen25vl_format computes it: round(x * (new_w / w)). The
                # other order lands on the other side of a .5 for some sizes (x 85 of 136 -> 140: 87.5 -> 88,
                # where the notebook writes 87), so data converted here would differ from the official tool's.
                sx, sy = fw / width, fh / height
                vals = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
            else:
                # x / w first, then the extent: convert_to_qwen2vl_format's round(x / w * 1000), lmms-eval's x / w.
                vals = [v * e for v, e in zip(boxes.pixel_to_normalized(box, width, height), (fw, fh, fw, fh))]
        if self.kind in ("padded_square", "unit"):
            return [round(min(max(v, 0.0), 1.0), self.decimals) for v in vals]
        fw, fh = self.frame_size(width, height)
        # Pixels of the resized image are 0..new_w - 1 (process_bbox.ipynb's convert_to_qwen25vl_format clips
        # there); the 0..1000 frames clip at 1000 (its convert_to_qwen2vl_format).
        last = 1 if self.kind == "resized_pixels" else 0
        limits = (fw - last, fh - last, fw - last, fh - last)
        return [int(min(max(round(v), 0), lim)) for v, lim in zip(vals, limits)]

    def from_frame(self, values: Sequence[float], width: float, height: float) -> list[float]:
        """Frame numbers -> a pixel box of the original image, clipped to it."""
        if self.kind == "padded_square":
            return boxes.square_to_pixel(values, width, height)
        fw, fh = self.frame_size(width, height)
        # v / extent * w, in the order of the official evaluation (QwenLM/Qwen3-VL evaluation/ODinW-13/run_odinw.py:
        # bbox / 1000 * img_w, bbox / resized_w * img_w), so a parsed box equals theirs to the last bit.
        x1, y1, x2, y2 = (float(v) for v in values)
        return boxes.clip_box([x1 / fw * width, y1 / fh * height, x2 / fw * width, y2 / fh * height], width, height)

    def image_bounds(self, width: float, height: float) -> list[float]:
        """Where the image lies in the frame's numbers, ``[x_lo, y_lo, x_hi, y_hi]``: a box beyond it is
        outside the image. Only the padded square holds more than the image (its padding)."""
        if self.kind == "padded_square":
            return boxes.pixel_to_square([0, 0, width, height], width, height)
        fw, fh = self.frame_size(width, height)
        # The resized image's last pixel is new_w - 1: the official conversion never writes new_w.
        last = 1 if self.kind == "resized_pixels" else 0
        return [0.0, 0.0, fw - last, fh - last]

    @property
    def step(self) -> float:
        """The smallest difference the frame writes: 0.01 with 2 decimals, 1 for integer frames."""
        return 10.0 ** -self.decimals if self.kind in ("padded_square", "unit") else 1.0

    # ---- text
    def _format(self, vals: Sequence, style: str, label: str | None = None) -> str:
        if style == "list":
            return "[" + ", ".join(f"{v:.{self.decimals}f}" for v in vals) + "]"
        if style == "int_list":
            return "[" + ", ".join(str(v) for v in vals) + "]"
        if style == "qwen2":
            return f"<|box_start|>({vals[0]},{vals[1]}),({vals[2]},{vals[3]})<|box_end|>"
        obj = {"bbox_2d": list(vals)}
        if label:
            obj["label"] = label
        return json.dumps(obj, ensure_ascii=False)

    def render_box(self, box: Sequence[float], width: float, height: float) -> str:
        """A pixel box as the family writes it inside a question ("... this region: BOX")."""
        return self._format(self.to_frame(box, width, height), self.spec.question_style)

    def render_answer(self, box: Sequence[float], width: float, height: float, label: str | None = None) -> str:
        """A pixel box as the family answers a grounding question (JSON with the label for Qwen2.5/3-VL)."""
        return self._format(self.to_frame(box, width, height), self.spec.answer_style, label)

    def parse_box(self, text: str, width: float, height: float) -> list[float] | None:
        """The first box in generated text (any family's notation, :func:`vlm_core.boxes.first_box`), in
        pixels of the original image; None when there is none or it is inverted."""
        vals = first_box(text)
        return None if vals is None else self.from_frame(vals, width, height)

    # ---- images
    def prepare_image(self, image: Image.Image, fill: Sequence[float]) -> Image.Image:
        """The image as the model sees it, for training and inference alike: LLaVA-1.5's and ViP-LLaVA's
        padded to a square in ``fill`` (the processor's image mean), the frame their boxes are written
        in; every other family's as it is (its processor takes any aspect ratio)."""
        return boxes.pad_to_square(image, fill) if self.kind == "padded_square" else image

    # ---- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        from vlm_core.io_utils import write_json_atomic
        path = Path(directory) / FRAME_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "BoxFrame | None":
        """The frame a trained model saved, or None when the folder has none (a model trained before)."""
        path = Path(directory) / FRAME_FILE
        if not path.is_file():
            return None
        data = _read_json(path)
        if data is None:
            raise FamilyError(f"{path}: not a JSON object")
        return cls.from_dict(data, where=str(path))


def frame_for_family(family: Family | str, resize: dict | None = None) -> BoxFrame:
    """The frame of ``family``; Qwen2.5-VL's needs the processor's resize settings (default: official)."""
    fam = family if isinstance(family, Family) else family_named(family)
    if fam.frame_kind in ("padded_square", "unit"):
        return BoxFrame(fam.name, fam.frame_kind, decimals=fam.decimals)
    if fam.frame_kind == "norm1000":
        return BoxFrame(fam.name, "norm1000")
    settings = dict(resize or fam.default_resize)
    frame = BoxFrame(fam.name, "resized_pixels", factor=settings["factor"], min_pixels=settings["min_pixels"],
                     max_pixels=settings["max_pixels"])
    frame._resize()  # validates
    return frame


def frame_from_processor(family: Family | str, processor) -> BoxFrame:
    """The frame of a loaded processor (its image processor's resize settings decide Qwen2.5-VL's)."""
    fam = family if isinstance(family, Family) else family_named(family)
    if fam.frame_kind != "resized_pixels":
        return frame_for_family(fam)
    return frame_for_family(fam, resize_settings(getattr(processor, "image_processor", processor)))


def frame_for(base_model: str | os.PathLike) -> BoxFrame:
    """The frame of a base model id or folder, without loading it (what conversion renders for).

    A trained model's saved ``box_frame.json`` wins; else the processor config in the folder (or
    in the local hub cache); else, for a hub id never downloaded, the official checkpoint's settings.
    """
    fam = detect_family(base_model)
    path = Path(str(base_model))
    if path.is_dir():
        saved = BoxFrame.load(path)
        if saved is not None:
            return saved
    if fam.frame_kind != "resized_pixels":
        return frame_for_family(fam)
    config = None
    if path.is_dir():
        config = _saved_image_processor(path)
    else:
        for name in ("processor_config.json", "preprocessor_config.json"):
            cached = _cached_hub_file(str(base_model), name)
            if cached:
                config = _saved_image_processor(cached.parent)
                break
    return frame_for_family(fam, resize_settings(config) if config else None)


def frame_of_record(record: dict, where: str = "record") -> BoxFrame:
    """The frame a LLaVA-format record was rendered for; a record without one predates families
    and was rendered for LLaVA-1.5."""
    data = record.get(FRAME_KEY)
    if data is None:
        return frame_for_family("llava")
    return BoxFrame.from_dict(data, where=f"{where}.{FRAME_KEY}")


def frame_entry(frame: BoxFrame) -> dict:
    """What a LLaVA-format record rendered for ``frame`` says about it: nothing for LLaVA-1.5's, which
    is what a record without a frame means (:func:`frame_of_record`), else ``{FRAME_KEY: frame}``."""
    return {} if frame == frame_for_family("llava") else {FRAME_KEY: frame.to_dict()}


def check_frame(data_frame: BoxFrame, model_frame: BoxFrame, where: str, base_model: str) -> None:
    """Refuse data rendered for another family or resize setting, naming what to rerun."""
    if data_frame == model_frame:
        return
    raise FamilyError(f"{where}: boxes were rendered for {data_frame.describe()} but {base_model} uses "
                      f"{model_frame.describe()}; rerun convert_to_llava_format.py --base_model {base_model}")


# --------------------------------------------------------------------------- chat layout
def chat_messages(turns: Iterable[tuple[str, str | None]], system: str | None = None) -> list[dict]:
    """HF chat messages for ``(question, answer)`` turns; the image goes with the first question.

    Every supported family's chat template reads this content-list form.
    """
    messages = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    for i, (question, answer) in enumerate(turns):
        content = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def _render(processor, messages: list[dict], generation: bool) -> str:
    return processor.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)


def end_of_turn(family: Family, tokenizer) -> str:
    """The token that ends an answer: the family's, else the tokenizer's EOS."""
    token = family.end_of_turn or getattr(tokenizer, "eos_token", None)
    if not token:
        raise FamilyError(f"{family.name}: the tokenizer has no EOS token to end an answer with")
    return token


def generation_prompt(processor, question: str, system: str | None = None,
                      history: Sequence[tuple[str, str]] = ()) -> str:
    """The text a model is asked with: the chat template's prompt up to where the answer starts."""
    return _render(processor, chat_messages([*history, (question, None)], system), generation=True)


def question_prompt(family: Family, processor, fmt: PromptFormat, question: str) -> str:
    """The text one question is asked with, as training laid it out: LLaVA-1.5's through ``fmt``
    (:class:`vlm_core.prompts.PromptFormat`), every other family's through its chat template with
    ``fmt``'s system prompt."""
    if family.uses_prompt_format:
        return fmt.prompt(question, first=True)
    return generation_prompt(processor, question, system=fmt.system_prompt or None)


def conversation_segments(processor, family: Family, turns: Sequence[tuple[str, str]],
                          system: str | None = None) -> list[tuple[str, bool]]:
    """The rendered conversation as ``(text, supervised)`` pieces, prompt/answer alternating.

    Each piece is what the chat template adds: a prompt up to the answer, then the answer up to
    and including the family's end-of-turn token (appended when the template writes none, as
    llava-1.5's does not). Whatever the template writes after the end-of-turn token (a space,
    a newline) starts the next prompt and is not supervised. The concatenation is the rendered
    conversation with that one fix.
    """
    eot = end_of_turn(family, getattr(processor, "tokenizer", processor))
    segments: list[tuple[str, bool]] = []
    carry = ""         # the template's separator after the previous answer: starts the next prompt
    rendered = ""      # what the template rendered for the turns so far
    for i in range(len(turns)):
        history = list(turns[:i])
        asked = _render(processor, chat_messages(history + [(turns[i][0], None)], system), generation=True)
        answered = _render(processor, chat_messages(history + [turns[i]], system), generation=False)
        answer = turns[i][1]
        if not asked.startswith(rendered) or not answered.startswith(rendered):
            raise FamilyError(f"{family.name}: the chat template does not render a conversation as a "
                              "growing prefix; cannot tell the answers apart")
        if answered.startswith(asked):
            tail = answered[len(asked):]         # answer [+ end of turn] [+ separator]
        else:
            # The template writes the assistant's header differently from its generation prompt
            # (llava-onevision: "assistant \n" vs "assistant\n"): train on the prompt inference sends.
            common = len(os.path.commonprefix([asked, answered]))
            at = answered.find(answer, common)
            if at < 0:
                raise FamilyError(f"{family.name}: the chat template did not render answer {i} verbatim")
            tail = answered[at:]
        start = tail.find(answer)
        if start < 0:
            raise FamilyError(f"{family.name}: the chat template did not render answer {i} verbatim")
        cut = tail.find(eot, start + len(answer))
        if cut >= 0:
            supervised, rest = tail[:cut + len(eot)], tail[cut + len(eot):]
        else:  # the template writes no end of turn (llava-1.5): its separator is replaced by EOS
            supervised, rest = tail[:start + len(answer)] + eot, ""
        segments.append((carry + asked[len(rendered):], False))
        segments.append((supervised, True))
        carry, rendered = rest, answered
    return segments


def decode_answer(tokenizer, family: Family, ids: Sequence[int]) -> str:
    """Generated ids as answer text: special tokens dropped (EOS, padding, end of turn), except those
    that are part of the family's answers (Qwen2-VL's ``<|box_start|>``...), which the plain
    ``skip_special_tokens=True`` would drop too."""
    if not family.keep_tokens:
        return tokenizer.decode(ids, skip_special_tokens=True)
    keep = {tokenizer.convert_tokens_to_ids(t) for t in family.keep_tokens}
    special = set(tokenizer.all_special_ids)
    special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
    return tokenizer.decode([i for i in ids if i in keep or i not in special], skip_special_tokens=False)


def image_token_count(processor, width: int, height: int) -> int:
    """How many image tokens the processor expands one ``width`` x ``height`` image to, without the
    image (for length limits before reading pixels). transformers' processors compute it for
    serving engines (``_get_num_multimodal_tokens``); tests check it against real processing."""
    counts = processor._get_num_multimodal_tokens(image_sizes=[(int(height), int(width))])
    return int(counts["num_image_tokens"][0])


def module_role(family: Family, module_name: str) -> str:
    """``vision``, ``projector`` or ``language`` for a module or parameter name of the family's model
    (also as peft or DDP name it: ``base_model.model.``/``module.`` prefixes are ignored)."""
    module_name = re.sub(r"^(module\.)?(base_model\.model\.)?", "", module_name)
    if any(module_name == p or module_name.startswith(p + ".") for p in family.projector_prefixes):
        return "projector"
    if any(module_name == p or module_name.startswith(p + ".") for p in family.vision_prefixes):
        return "vision"
    return "language"
