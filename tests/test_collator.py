"""The training examples and the collator: what is supervised, padding, images, limits, validation."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from fixtures.toy_data import write_toy_llava_dataset
from vlm_core.boxes import pad_to_square
from vlm_core.io_utils import InputError
from vlm_core.llava_format import iter_llava_records
from vlm_core.prompts import PromptFormat
from vlm_training.llava_data import (
    IGNORE_INDEX,
    LlavaCollator,
    TokenLayout,
    build_examples,
    conversation_segments,
    load_llava_dataset,
    tokenize_segments,
)

MULTI_TURN = {
    "id": "scenes/red.png#1", "image": "scenes/red.png", "width": 48, "height": 32,
    "conversations": [
        {"from": "human", "value": "<image>\nHow many objects are there?"},
        {"from": "gpt", "value": "There are 2 objects in this image."},
        {"from": "human", "value": "Is there a can in this image?"},
        {"from": "gpt", "value": "Yes"},
        {"from": "human", "value": "Where is the can?"},
        {"from": "gpt", "value": "[0.25, 0.33, 0.75, 0.67]"},
    ],
    "qa_types": ["count", "exists", "location"],
}


@pytest.fixture(scope="module")
def processor(tiny_models):
    from transformers import AutoProcessor
    return AutoProcessor.from_pretrained(tiny_models["llava"])


@pytest.fixture(scope="module")
def layout(processor):
    return TokenLayout(processor, PromptFormat.from_chat_template(processor))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_llava_dataset(tmp_path_factory.mktemp("toy"))


def supervised_runs(labels: torch.Tensor) -> list[list[int]]:
    """Contiguous runs of supervised label ids."""
    runs, current = [], []
    for t in labels.tolist():
        if t == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(t)
    return runs + ([current] if current else [])


def test_single_turn_labels_are_exactly_answer_and_eos(layout, toy):
    json_path, image_dir, records = toy
    dataset, stats = load_llava_dataset(json_path, image_dir, layout, max_length=512)
    assert (stats.records, stats.examples, stats.shortened, stats.dropped) == (4, 4, 0, 0)
    tok = layout.tokenizer
    for item, record in zip((dataset[i] for i in range(len(dataset))), records):
        runs = supervised_runs(item["labels"])
        assert len(runs) == 1
        assert tok.decode(runs[0]) == " " + record["conversations"][1]["value"] + "</s>"
        assert runs[0][-1] == tok.eos_token_id
        # labels sit on the same positions as the tokens they supervise (the model shifts them)
        mask = item["labels"] != IGNORE_INDEX
        assert torch.equal(item["input_ids"][mask], item["labels"][mask])


def test_multi_turn_labels_and_full_text(layout, toy, tmp_path):
    json_path, image_dir, _ = toy
    path = tmp_path / "multi.json"
    path.write_text(json.dumps([MULTI_TURN]))
    dataset, _ = load_llava_dataset(path, image_dir, layout, max_length=512)
    item = dataset[0]
    tok = layout.tokenizer
    answers = [t["value"] for t in MULTI_TURN["conversations"][1::2]]
    assert [tok.decode(r) for r in supervised_runs(item["labels"])] == [" " + a + "</s>" for a in answers]
    image_id = layout.image_token_id
    assert (item["input_ids"] == image_id).sum().item() == layout.num_image_tokens == 16
    assert (item["labels"][item["input_ids"] == image_id] == IGNORE_INDEX).all()
    expected = ("<s>USER: " + "<image>" * 16 + "\nHow many objects are there? ASSISTANT: There are 2 objects in "
                "this image.</s>USER: Is there a can in this image? ASSISTANT: Yes</s>USER: Where is the can? "
                "ASSISTANT: [0.25, 0.33, 0.75, 0.67]</s>")
    assert tok.decode(item["input_ids"]) == expected


def test_first_prompt_is_tokenized_like_inference(processor, layout, toy):
    """The tokens before the first answer are what the processor gives for fmt.prompt(question)."""
    json_path, image_dir, records = toy
    dataset, _ = load_llava_dataset(json_path, image_dir, layout, max_length=512)
    fmt = layout.fmt
    for i, record in enumerate(records):
        question = record["conversations"][0]["value"][len("<image>\n"):]
        image = pad_to_square(Image.open(image_dir / record["image"]).convert("RGB"),
                              processor.image_processor.image_mean)
        ref = processor(text=[fmt.prompt(question, first=True)], images=[image], return_tensors="pt")
        n = ref["input_ids"].shape[1]
        item = dataset[i]
        assert torch.equal(item["input_ids"][:n], ref["input_ids"][0])
        assert (item["labels"][:n] == IGNORE_INDEX).all() and item["labels"][n] != IGNORE_INDEX
        assert torch.allclose(item["pixel_values"], ref["pixel_values"][0])


def test_image_is_padded_to_square_with_the_mean(layout, toy):
    json_path, image_dir, records = toy
    dataset, _ = load_llava_dataset(json_path, image_dir, layout, max_length=512)
    # record 0: a 48x32 red image -> 48x48 with 8-pixel bands of image_mean above and below,
    # which normalize to ~0; the red image itself is far from 0 in the red channel.
    pixels = dataset[0]["pixel_values"]
    assert pixels.shape == (3, 32, 32)
    assert pixels[:, 0, :].abs().max() < 0.05 and pixels[:, -1, :].abs().max() < 0.05
    assert pixels[0, 16, 1] > 1.0


def test_collator_pads_right_and_masks_padding(layout, toy):
    json_path, image_dir, _ = toy
    dataset, _ = load_llava_dataset(json_path, image_dir, layout, max_length=512)
    items = [dataset[0], dataset[3]]
    lengths = [len(x["input_ids"]) for x in items]
    assert lengths == [52, 71]
    batch = LlavaCollator(layout.pad_token_id)(items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, 71)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["attention_mask"][0].tolist() == [1] * 52 + [0] * 19
    assert batch["input_ids"][0, 52:].eq(layout.pad_token_id).all()
    assert batch["labels"][0, 52:].eq(IGNORE_INDEX).all()
    assert torch.equal(batch["input_ids"][0, :52], items[0]["input_ids"])
    assert torch.equal(batch["labels"][1], items[1]["labels"])
    left = LlavaCollator(layout.pad_token_id, padding_side="left", pad_to_multiple_of=8)(items)
    assert left["input_ids"].shape == (2, 72)
    assert left["attention_mask"][0].tolist() == [0] * 20 + [1] * 52


def test_long_records_lose_last_turns_or_are_dropped(layout, toy, tmp_path):
    _, image_dir, records = toy
    long_question = dict(records[1], id="long#0")
    long_question["conversations"] = [{"from": "human", "value": "<image>\n" + "the small red box " * 20},
                                      {"from": "gpt", "value": "Yes"}]
    data = [MULTI_TURN, long_question]
    pieces = tokenize_segments(layout.tokenizer, conversation_segments(MULTI_TURN, layout.fmt, "</s>"))
    # BOS + the first two turn pairs, with the image token expanded: nothing else fits
    two_pairs = 1 + sum(len(p) for p in pieces[:4]) + layout.num_image_tokens - 1
    examples, stats = build_examples(data, "x.json", image_dir, layout, max_length=two_pairs)
    assert (stats.examples, stats.shortened, stats.turns_dropped, stats.dropped) == (1, 1, 1, 1)
    assert stats.dropped_ids == ["long#0"]
    ex = examples[0]
    assert ex.length == two_pairs == len(layout.expand(ex.input_ids))
    assert ex.input_ids.count(layout.image_token_id) == 1
    assert [layout.tokenizer.decode(r) for r in supervised_runs(torch.tensor(ex.labels))] == [
        " There are 2 objects in this image.</s>", " Yes</s>"]
    examples, stats = build_examples(data, "x.json", image_dir, layout, max_length=two_pairs - 1)
    assert (stats.examples, stats.shortened, stats.turns_dropped, stats.dropped) == (1, 1, 2, 1)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    # an image alone is 16 tokens: no record fits, and the error says so
    with pytest.raises(InputError, match="no record of .* fits in --max_length 20"):
        load_llava_dataset(path, image_dir, layout, max_length=20)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["conversations"][1].update({"from": "human"}),
     "record 1 (id 'b#0'): conversations[1].from must be 'gpt', got 'human'"),
    (lambda r: r["conversations"][0].update({"value": "no image here"}),
     "record 1 (id 'b#0'): conversations[0].value must start with '<image>\\n'"),
    (lambda r: r.pop("image"), "record 1 (id 'b#0'): field 'image' must be a non-empty string"),
    (lambda r: r["conversations"].append({"from": "human", "value": "Q2"}),
     "record 1 (id 'b#0'): field 'conversations' has 3 turns"),
    (lambda r: r["conversations"].pop(), "record 1 (id 'b#0'): field 'conversations' must be a list of at least"),
    (lambda r: r["conversations"][1].update({"value": 3}),
     "record 1 (id 'b#0'): conversations[1].value must be a non-empty string"),
    (lambda r: r.update({"qa_types": ["a", "b"]}), "record 1 (id 'b#0'): field 'qa_types' must be a list"),
    (lambda r: r["conversations"].extend([{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]),
     "record 1 (id 'b#0'): conversations[2].value: '<image>' may appear only once"),
])
def test_validation_names_record_and_field(tmp_path, mutate, message):
    def rec(rid):
        return {"id": rid, "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                                {"from": "gpt", "value": "A"}]}
    path = tmp_path / "f.json"
    data = [rec("a#0"), rec("b#0")]
    path.write_text(json.dumps(data))
    assert list(iter_llava_records(path)) == data
    mutate(data[1])
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as err:
        list(iter_llava_records(path))
    assert str(err.value).startswith(f"{path}: " + message)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="expected a JSON list"):
        list(iter_llava_records(path))


def test_piecewise_tokenization_equals_whole_text(layout):
    """A token that straddles a segment boundary goes to the later segment (an answer keeps its first token)."""
    tok = layout.tokenizer
    for texts, expected in [(["glas", "ses"], ["g", "lasses"]),
                            (["bot", "tle on the gr", "ass"], ["", "bottle on the", " grass"]),
                            (["USER: Q ASSISTANT:", " Yes</s>", "USER: Q2 ASSISTANT:"],
                             ["USER: Q ASSISTANT:", " Yes</s>", "USER: Q2 ASSISTANT:"])]:
        pieces = tokenize_segments(tok, [(t, False) for t in texts])
        assert sum(pieces, []) == tok("".join(texts), add_special_tokens=False).input_ids
        assert [tok.decode(p) for p in pieces] == expected


class _SpyTokenizer:
    """The real tokenizer, remembering the longest text it was asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, text, **kwargs):
        self.longest = max(self.longest, len(text))
        return self.tokenizer(text, **kwargs)


def test_tokenization_cost_is_bounded_by_max_length(layout, toy):
    """A record with a 5 MB answer is cut to a character budget before any tokenization (issue 16)."""
    import copy
    _, image_dir, _ = toy
    huge = "the small red box " * 300_000                      # 5.4 MB
    late = copy.deepcopy(MULTI_TURN)
    late["conversations"][3]["value"] = huge                   # second answer: the record loses turns 2 and 3
    early = copy.deepcopy(MULTI_TURN)
    early["id"] = "early#0"
    early["conversations"][1]["value"] = huge                  # first answer: the record is dropped
    spy = copy.copy(layout)
    spy.tokenizer = _SpyTokenizer(layout.tokenizer)
    examples, stats = build_examples([late, early], "x.json", image_dir, spy, max_length=512)
    budget = layout.char_budget(512)
    assert budget == 512 * layout.longest_token_chars < 20_000
    assert spy.tokenizer.longest < budget + 200                # the templates add a few characters
    assert (stats.examples, stats.shortened, stats.turns_dropped, stats.dropped) == (1, 1, 2, 1)
    assert stats.dropped_ids == ["early#0"]
    # what is kept equals the record without the over-long turns
    first_pair = dict(MULTI_TURN, conversations=MULTI_TURN["conversations"][:2])
    reference, _ = build_examples([first_pair], "x.json", image_dir, layout, max_length=512)
    assert examples[0].input_ids == reference[0].input_ids and examples[0].labels == reference[0].labels


def test_jsonl_file_gives_the_same_examples_as_json(layout, toy, tmp_path):
    json_path, image_dir, records = toy
    jsonl = tmp_path / "toy.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    a, stats_a = load_llava_dataset(json_path, image_dir, layout, max_length=512)
    b, stats_b = load_llava_dataset(jsonl, image_dir, layout, max_length=512)
    assert stats_a == stats_b and stats_b.records == 4
    assert [(e.input_ids, e.labels, e.image_path) for e in a.examples] == \
        [(e.input_ids, e.labels, e.image_path) for e in b.examples]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(records[0]) + "\n" + json.dumps({"id": "x#0"}) + "\n")
    with pytest.raises(InputError, match="record 1 .id 'x#0'.: field 'image'"):
        load_llava_dataset(bad, image_dir, layout, max_length=512)
