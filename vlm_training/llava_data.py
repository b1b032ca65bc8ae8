"""LLaVA conversation files -> supervised training examples, and the batch collator.

A record (stage 3's output; the format is defined in :mod:`vlm_core.llava_format`)::

    {"id": "scenes/a.jpg#0", "image": "scenes/a.jpg", "width": 640, "height": 480,
     "conversations": [{"from": "human", "value": "<image>\\nQ1"}, {"from": "gpt", "value": "A1"},
                       {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}],
     "qa_types": ["count", "region_description"]}

becomes the text the model is trained on, laid out by the :class:`PromptFormat` derived
from the processor's chat template::

    <s>USER: <image>\\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>

with ``<image>`` expanded to the model's image tokens. Labels supervise exactly the answer
tokens (answer prefix included: it is what the model generates after "ASSISTANT:") and
their EOS; everything else (BOS, image tokens, questions, padding) is -100.

Tokens are found by tokenizing the conversation prefix by prefix, so they are the tokens
of the whole text (what the model sees) and the prompt of the first turn is tokenized
exactly as inference tokenizes ``fmt.prompt(question, first=True)``.

Other families (LLaVA-NeXT/OneVision, Qwen2/2.5/3-VL) use the same machinery through
:class:`vlm_training.family_data.FamilyLayout`: their chat template lays the turns out, their
end-of-turn token plays EOS's part, and an image takes as many tokens as its size gives.

A record converted with visual box prompts (its ``box_prompt`` field) has its boxes drawn on the image
(:func:`vlm_core.images.draw_box_prompt`, the function inference draws with) before the family prepares it;
training refuses records converted otherwise than the run's ``--box_prompt``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from PIL import Image

from vlm_core import families
from vlm_core.images import ImageLoadError, draw_box_prompt, load_image
from vlm_core.io_utils import InputError
from vlm_core.llava_format import (
    IMAGE_PLACEHOLDER,
    iter_llava_records,
    record_box_prompt,
    record_where,
    resolve_image_path,
)
from vlm_core.prompts import PromptFormat
from vlm_core.runtime import plural, progress_bar

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- tokenization
def conversation_segments(record: dict, fmt: PromptFormat, eos_token: str,
                          char_budget: int | None = None) -> list[tuple[str, bool]]:
    """The conversation as ``(text, supervised)`` pieces: prompt, answer+EOS, prompt, answer+EOS, ...

    With ``char_budget``, only the leading turn pairs whose text adds up to at most that many
    characters: the rest cannot fit (see :meth:`TokenLayout.char_budget`) and is never built or tokenized.
    """
    conv = record["conversations"]
    segments, used = [], 0
    for k in range(0, len(conv), 2):
        question, answer = conv[k]["value"], conv[k + 1]["value"]
        used += len(question) + len(answer)
        if char_budget is not None and used > char_budget:
            break
        if k == 0:
            question = question[len(IMAGE_PLACEHOLDER):]
        segments.append((fmt.prompt(question, first=(k == 0)), False))
        segments.append((fmt.answer_prefix + answer + eos_token, True))
    return segments


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def tokenize_segments(tokenizer, segments: list[tuple[str, bool]]) -> list[list[int]]:
    """Token ids of each segment, such that their concatenation is the tokenization of the whole text.

    Each segment's ids are what the prefix ending with it adds to the prefix before it.
    When a token straddles a boundary (the tokenizer merged across it), it goes to the
    later segment, so an answer's first token is always supervised.
    """
    pieces: list[list[int]] = []
    text, prev = "", []
    for seg_text, _ in segments:
        text += seg_text
        ids = tokenizer(text, add_special_tokens=False).input_ids
        common = 0
        limit = min(len(prev), len(ids))
        while common < limit and prev[common] == ids[common]:
            common += 1
        # The new text may re-tokenize the end of earlier segments: those tokens move here.
        drop, j = len(prev) - common, len(pieces) - 1
        while drop:
            take = min(drop, len(pieces[j]))
            pieces[j] = pieces[j][:len(pieces[j]) - take]
            drop, j = drop - take, j - 1
        pieces.append(ids[common:])
        prev = ids
    return pieces


@dataclass
class Example:
    record_index: int
    record_id: str
    image_path: Path
    input_ids: list[int]        # with ONE image token; expanded in __getitem__
    labels: list[int]
    length: int                 # after image-token expansion
    image_tokens: int = 0       # what the one image token expands to (its image's size decides, for some families)
    drawn_boxes: list = field(default_factory=list)  # visual box prompts drawn on the image ({"bbox", "colour"})


@dataclass
class DatasetStats:
    records: int = 0
    examples: int = 0
    shortened: int = 0          # records that lost their last turns to --max_length
    turns_dropped: int = 0
    dropped: int = 0            # records whose first turn alone does not fit
    supervised_tokens: int = 0
    dropped_ids: list = field(default_factory=list)

    def summary(self, name: str) -> str:
        return (f"{name}: {plural(self.examples, 'example')} from {plural(self.records, 'record')}, "
                f"{self.shortened} shortened ({plural(self.turns_dropped, 'turn')} dropped), "
                f"{self.dropped} dropped as too long")


class TokenLayout:
    """What the processor does to a prompt, measured once: BOS, image token id and count."""

    frame: "families.BoxFrame | None" = None   # set by training: records rendered for another frame are refused
    base_model: str = ""
    family_name = "llava"                       # whose frame prepares the images when ``frame`` is not set

    def image_frame(self) -> families.BoxFrame:
        """The frame that prepares the images (BoxFrame.prepare_image), the same function inference uses."""
        return self.frame or families.frame_for_family(self.family_name)

    def check_record(self, record: dict, where: str) -> None:
        """Refuse a record whose boxes were rendered for another family or resize setting, or put to the model
        otherwise than ``fmt.box_prompt`` (drawn or in text)."""
        mode = record_box_prompt(record)[0]
        if mode != self.fmt.box_prompt:
            raise InputError(f"{where}: converted with --box_prompt {mode}, but this run trains with --box_prompt "
                             f"{self.fmt.box_prompt}; rerun convert_to_llava_format.py --box_prompt "
                             f"{self.fmt.box_prompt} or train with --box_prompt {mode}")
        if self.frame is None:
            return
        try:
            families.check_frame(families.frame_of_record(record, where), self.frame, where, self.base_model)
        except families.FamilyError as e:
            raise InputError(str(e)) from None

    def __init__(self, processor, fmt: PromptFormat):
        tok = processor.tokenizer
        self.tokenizer = tok
        self.fmt = fmt
        self.image_token_id = tok.convert_tokens_to_ids(fmt.image_token)
        self.bos = [tok.bos_token_id] if _adds_bos(tok) else []
        if tok.eos_token is None:
            raise InputError("the base model's tokenizer has no EOS token")
        self.eos_token, self.eos_token_id = tok.eos_token, tok.eos_token_id
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.image_processor = processor.image_processor
        self.fill = tuple(float(v) for v in getattr(self.image_processor, "image_mean", (0.0, 0.0, 0.0)))
        # Run the real processor on one prompt: it tells how many tokens an image takes,
        # and proves that our tokenization of a prompt equals the one inference will get.
        prompt = fmt.prompt("How many objects are there?", first=True)
        probe = processor(text=[prompt], images=[Image.new("RGB", (40, 30))], return_tensors="pt")
        ref = probe["input_ids"][0].tolist()
        self.num_image_tokens = ref.count(self.image_token_id)
        ours = self.expand(self.bos + tokenize_segments(tok, [(prompt, False)])[0])
        if self.num_image_tokens == 0 or ours != ref:
            raise RuntimeError("tokenizing a prompt piecewise does not reproduce the processor's input_ids "
                               f"(ours {ours[:40]}..., processor {ref[:40]}...)")
        # No token covers more characters than the longest vocabulary entry (as written in the vocabulary,
        # which is never shorter than the text it decodes to).
        self.longest_token_chars = max(len(t) for t in tok.get_vocab())

    def char_budget(self, max_length: int) -> int:
        """Characters of conversation text beyond which ``max_length`` tokens surely cannot hold it:
        longer text is cut before any tokenization, so its cost is bounded by ``max_length``."""
        return max_length * self.longest_token_chars

    def expand(self, ids: list[int], n: int | None = None) -> list[int]:
        """Replace the single image token by ``n`` (default: the model's ``num_image_tokens``) copies."""
        i = ids.index(self.image_token_id)
        return ids[:i] + [self.image_token_id] * (self.num_image_tokens if n is None else n) + ids[i + 1:]

    def segments(self, record: dict, char_budget: int | None = None) -> list[tuple[str, bool]]:
        """The record's conversation as ``(text, supervised)`` pieces (see :func:`conversation_segments`)."""
        return conversation_segments(record, self.fmt, self.eos_token, char_budget)

    def image_tokens(self, record: dict) -> int:
        """How many image tokens the record's image takes (LLaVA-1.5: always the same)."""
        return self.num_image_tokens

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        prepared = self.image_frame().prepare_image(image, self.fill)   # LLaVA-1.5: padded to a square
        return self.image_processor(images=prepared, return_tensors="pt")["pixel_values"][0]

    def image_inputs(self, image: Image.Image, expected_tokens: int, where: str) -> dict:
        """The model inputs of one image besides the token ids."""
        return {"pixel_values": self.pixel_values(image)}


def build_examples(records: Iterable[dict], path: str | os.PathLike, image_dir: str | os.PathLike,
                   layout: TokenLayout, max_length: int) -> tuple[list[Example], DatasetStats]:
    """Tokenize every record, keep whole turn pairs that fit in ``max_length``, resolve images.

    ``records`` may be a stream: only the tokenized examples are kept.
    """
    path, image_dir = Path(path), Path(image_dir)
    stats = DatasetStats()
    examples = []
    budget = layout.char_budget(max_length)
    for i, rec in enumerate(progress_bar(records, desc=f"tokenizing {path.name}", unit="record", delay=2)):
        stats.records += 1
        where = record_where(path, i, rec)
        layout.check_record(rec, where)
        image_path = resolve_image_path(image_dir, rec["image"], where)
        pairs = len(rec["conversations"]) // 2
        pieces = tokenize_segments(layout.tokenizer, layout.segments(rec, budget))
        if pieces and pieces[0].count(layout.image_token_id) != 1:
            raise InputError(f"{where}: the first prompt does not tokenize to exactly one image token")
        image_tokens = layout.image_tokens(rec)
        extra = image_tokens - 1
        input_ids, labels = list(layout.bos), [IGNORE_INDEX] * len(layout.bos)
        pairs_kept = 0
        for k in range(0, len(pieces), 2):
            prompt_ids, answer_ids = pieces[k], pieces[k + 1]
            if not answer_ids or answer_ids[-1] != layout.eos_token_id:
                raise RuntimeError(f"{where}: answer {k // 2} does not end with the EOS token "
                                   "(the tokenizer does not parse its own EOS string)")
            if len(input_ids) + extra + len(prompt_ids) + len(answer_ids) > max_length:
                break  # whole turns only: never cut an answer or the image tokens
            input_ids += prompt_ids + answer_ids
            labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
            pairs_kept += 1
        if pairs_kept == 0:
            stats.dropped += 1
            stats.dropped_ids.append(rec["id"])
            continue
        if pairs_kept < pairs:
            stats.shortened += 1
            stats.turns_dropped += pairs - pairs_kept
        stats.supervised_tokens += sum(1 for t in labels if t != IGNORE_INDEX)
        examples.append(Example(i, rec["id"], image_path, input_ids, labels, len(input_ids) + extra, image_tokens,
                                record_box_prompt(rec)[1]))
    stats.examples = len(examples)
    return examples, stats


class LlavaDataset(torch.utils.data.Dataset):
    """Tokenized examples; images are read, their box prompts drawn, padded to a square and processed on access."""

    def __init__(self, examples: list[Example], layout: TokenLayout, source: str | os.PathLike = ""):
        self.examples = examples
        self.layout = layout
        self.source = str(source)
        # Precomputed for the length-grouped sampler (no image is read to know a length).
        self.lengths = [ex.length for ex in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, idx: int) -> dict:
        ex = self.examples[idx]
        try:
            image = load_image(ex.image_path)
        except ImageLoadError as e:
            raise InputError(f"{self.source}: record {ex.record_index} (id {ex.record_id!r}): "
                             f"image {ex.image_path}: {e}") from None
        if ex.drawn_boxes:
            image = draw_box_prompt(image, ex.drawn_boxes)
        n = ex.image_tokens - 1
        i = ex.input_ids.index(self.layout.image_token_id)
        where = f"{self.source}: record {ex.record_index} (id {ex.record_id!r})"
        return {
            "input_ids": torch.tensor(self.layout.expand(ex.input_ids, ex.image_tokens), dtype=torch.long),
            "labels": torch.tensor(ex.labels[:i] + [IGNORE_INDEX] * n + ex.labels[i:], dtype=torch.long),
            **self.layout.image_inputs(image, ex.image_tokens, where),
        }


def load_llava_dataset(path: str | os.PathLike, image_dir: str | os.PathLike, layout: TokenLayout,
                       max_length: int, flag: str = "--train_data") -> tuple[LlavaDataset, DatasetStats]:
    """Stream, validate and tokenize a LLaVA file (JSON list or JSONL; train_vlm.py checked that it exists)
    into a dataset; InputError if nothing fits."""
    examples, stats = build_examples(iter_llava_records(path), path, image_dir, layout, max_length)
    if not stats.records:
        raise InputError(f"{flag}: {path} holds no records")
    if not examples:
        raise InputError(f"{flag}: no record of {path} fits in --max_length {max_length} "
                         f"(an image alone takes {layout.num_image_tokens} tokens)")
    return LlavaDataset(examples, layout, path), stats


class SeededLengthGroupedSampler(torch.utils.data.Sampler):
    """Length-grouped order (transformers' LengthGroupedSampler) drawn from ``seed + epoch``.

    The order depends only on the seed and the epoch, never on the global RNG: every
    process of a multi-GPU run draws the same order, and a run resumed mid-epoch sees
    exactly the batches the interrupted run would have seen.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


@dataclass
class LlavaCollator:
    """Pad a batch dynamically to its longest example (right side for training).

    Padding positions get ``attention_mask`` 0 and label -100.
    """
    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None
    image_token_id: int | None = None   # Qwen-VL families: marks the image tokens in mm_token_type_ids

    def __call__(self, features: list[dict]) -> dict:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        n = len(features)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, longest), dtype=torch.long)
        for row, f in enumerate(features):
            k = len(f["input_ids"])
            span = slice(0, k) if self.padding_side == "right" else slice(longest - k, longest)
            input_ids[row, span] = f["input_ids"]
            labels[row, span] = f["labels"]
            attention_mask[row, span] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        return batch | collate_images(features, input_ids, self.image_token_id)


def collate_images(features: list[dict], input_ids: torch.Tensor, image_token_id: int | None) -> dict:
    """Batch the per-image inputs: one tensor per example (LLaVA-1.5), patch rows of every image
    concatenated with their grids (Qwen-VL), or a varying number of tiles padded (LLaVA-NeXT/OneVision)."""
    pixels = [f["pixel_values"] for f in features]
    if "image_grid_thw" in features[0]:
        return {"pixel_values": torch.cat(pixels),
                "image_grid_thw": torch.stack([f["image_grid_thw"] for f in features]),
                "mm_token_type_ids": (input_ids == image_token_id).int()}
    out = {}
    if "image_sizes" in features[0]:
        tiles = max(p.shape[0] for p in pixels)
        pixels = [torch.cat([p, p.new_zeros((tiles - p.shape[0], *p.shape[1:]))]) for p in pixels]
        out["image_sizes"] = torch.stack([f["image_sizes"] for f in features])
    return out | {"pixel_values": torch.stack(pixels)}
