"""The system prompt of the prompt format (issue 11.3): names, rendering, saving, and what is supervised."""
from __future__ import annotations

import json

import pytest
import torch

from fixtures.toy_data import write_toy_llava_dataset
from vlm_core.prompts import (
    LLAVA_15_FIRST_TURN,
    PROMPT_FORMAT_FILE,
    SYSTEM_PROMPTS,
    PromptFormat,
    default_system_prompt,
    resolve_system_prompt,
)
from vlm_training.llava_data import IGNORE_INDEX, TokenLayout, conversation_segments, load_llava_dataset

LLAVA_V1 = ("A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions.")

RECORD = {
    "id": "scenes/red.png#1", "image": "scenes/red.png", "width": 48, "height": 32,
    "conversations": [
        {"from": "human", "value": "<image>\nHow many objects are there?"},
        {"from": "gpt", "value": "There are 2 objects in this image."},
        {"from": "human", "value": "Is there a can in this image?"},
        {"from": "gpt", "value": "Yes"},
    ],
    "qa_types": ["count", "exists"],
}


def llava_v1_get_prompt(system: str, messages: list[tuple[str, str | None]]) -> str:
    """Reference: haotian-liu/LLaVA llava/conversation.py (c121f04), Conversation.get_prompt for
    SeparatorStyle.TWO with conv_vicuna_v1's sep=" ", sep2="</s>" (the template of ``--version v1``)."""
    seps = [" ", "</s>"]
    ret = system + seps[0]
    for i, (role, message) in enumerate(messages):
        if message:
            ret += role + ": " + message + seps[i % 2]
        else:
            ret += role + ":"
    return ret


def test_llava_v1_sentence_is_llavas():
    assert SYSTEM_PROMPTS["llava_v1"] == LLAVA_V1
    assert SYSTEM_PROMPTS["none"] == ""


def test_rendered_prompt_without_and_with_the_system_prompt():
    plain = PromptFormat()
    assert plain.system_prompt == ""
    assert plain.prompt("How many objects are there?") == "USER: <image>\nHow many objects are there? ASSISTANT:"
    v1 = plain.with_system_prompt("llava_v1")
    assert v1.prompt("How many objects are there?") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nHow many objects are there? "
        "ASSISTANT:")
    # later turns carry no system prompt
    assert v1.prompt("Is there a can?", first=False) == "USER: Is there a can? ASSISTANT:"


def test_training_text_equals_llava_v1_conversation():
    """Prompt + answer + EOS segments, joined, are LLaVA's own v1 conversation text."""
    fmt = PromptFormat().with_system_prompt("llava_v1")
    text = "".join(t for t, _ in conversation_segments(RECORD, fmt, "</s>"))
    conv = RECORD["conversations"]
    expected = llava_v1_get_prompt(LLAVA_V1, [("USER", conv[0]["value"]), ("ASSISTANT", conv[1]["value"]),
                                              ("USER", conv[2]["value"]), ("ASSISTANT", conv[3]["value"])])
    assert text == expected == (
        LLAVA_V1 + " USER: <image>\nHow many objects are there? ASSISTANT: There are 2 objects in this image.</s>"
        "USER: Is there a can in this image? ASSISTANT: Yes</s>")
    # and the generation prompt equals LLaVA's with an empty assistant message
    assert fmt.prompt("Q?") == llava_v1_get_prompt(LLAVA_V1, [("USER", "<image>\nQ?"), ("ASSISTANT", None)])


def test_resolver_names_literal_and_auto():
    fmt = PromptFormat()
    assert fmt.first_turn == LLAVA_15_FIRST_TURN
    assert resolve_system_prompt("none", fmt) == ""
    assert resolve_system_prompt("llava_v1", fmt) == LLAVA_V1
    assert resolve_system_prompt("You are terse.", fmt) == "You are terse."
    assert resolve_system_prompt("auto", fmt) == LLAVA_V1 == default_system_prompt(fmt)
    assert resolve_system_prompt(None, fmt) == LLAVA_V1
    other = PromptFormat(first_turn="<image>\nQ: {question}\nA:", next_turn="Q: {question}\nA:")
    assert resolve_system_prompt("auto", other) == ""
    for bad, message in (("  ", "blank"), ("look at <image>", "image token")):
        with pytest.raises(ValueError, match=message):
            resolve_system_prompt(bad, fmt)
    # braces in a literal prompt are text, not a format field
    assert PromptFormat(system_prompt="Use {x}.").prompt("q") == "Use {x}. USER: <image>\nq ASSISTANT:"


def test_saved_with_the_model_and_old_files_load_without(tmp_path):
    fmt = PromptFormat().with_system_prompt("llava_v1")
    fmt.save(tmp_path)
    saved = json.loads((tmp_path / PROMPT_FORMAT_FILE).read_text())
    assert saved["system_prompt"] == LLAVA_V1 and saved["system_template"] == "{system} "
    assert PromptFormat.load(tmp_path) == fmt
    # a prompt_format.json written before the field existed: loads as it was trained, without one
    del saved["system_prompt"], saved["system_template"]
    (tmp_path / PROMPT_FORMAT_FILE).write_text(json.dumps(saved))
    old = PromptFormat.load(tmp_path)
    assert old.system_prompt == "" and old.prompt("q") == "USER: <image>\nq ASSISTANT:"
    for bad, message in (({"system_prompt": 3}, "system_prompt must be a string"),
                         ({"system_template": "no placeholder"}, "system_template has no"),
                         ({"system_prompt": "an <image>"}, "holds the image token")):
        with pytest.raises(ValueError, match=message):
            PromptFormat.from_dict({**saved, **bad})


def test_box_reference_names_a_box_by_text_colour_or_both():
    from vlm_core.prompts import REGION_DESCRIPTION_VISUAL, box_reference
    assert box_reference("text", "red", "[0.12, 0.34, 0.56, 0.78]") == "[0.12, 0.34, 0.56, 0.78]"
    assert box_reference("visual", "green", "[0.12, 0.34, 0.56, 0.78]") == "the green box"
    assert REGION_DESCRIPTION_VISUAL.format(box=box_reference("both", "red", "[0.12, 0.34, 0.56, 0.78]")) == \
        "Please provide a short description for the object in the red box [0.12, 0.34, 0.56, 0.78]."
    assert PromptFormat().box_prompt == "text" and "box_prompt" not in PromptFormat().to_dict()
    with pytest.raises(ValueError, match="box_prompt must be one of text, visual, both, got 'red'"):
        PromptFormat().with_box_prompt("red")


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from transformers import AutoProcessor

    from fixtures.tiny_models import build_llava
    return AutoProcessor.from_pretrained(build_llava(tmp_path_factory.mktemp("llava"), seed=0))


def test_chat_template_system_message_renders_the_same(processor):
    """llava-1.5-hf's chat template with a system message gives exactly our rendered prompt."""
    fmt = PromptFormat.from_chat_template(processor)
    assert fmt.system_template == "{system} " and fmt == PromptFormat()
    rendered = processor.apply_chat_template(
        [{"role": "system", "content": [{"type": "text", "text": LLAVA_V1}]},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}],
        add_generation_prompt=True, tokenize=False)
    assert rendered == fmt.with_system_prompt("llava_v1").prompt("How many?")


def test_only_answers_are_supervised_with_the_system_prompt(processor, tmp_path):
    fmt = PromptFormat.from_chat_template(processor).with_system_prompt("llava_v1")
    layout = TokenLayout(processor, fmt)          # checks: piecewise tokens == the processor's for a prompt
    _, image_dir, _ = write_toy_llava_dataset(tmp_path / "toy")
    path = tmp_path / "multi.json"
    path.write_text(json.dumps([RECORD]))
    dataset, stats = load_llava_dataset(path, image_dir, layout, max_length=1024)
    assert stats.examples == 1
    item = dataset[0]
    tok = layout.tokenizer
    runs, current = [], []
    for t in item["labels"].tolist() + [IGNORE_INDEX]:
        if t == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(t)
    assert [tok.decode(r) for r in runs] == [" There are 2 objects in this image.</s>", " Yes</s>"]
    mask = item["labels"] != IGNORE_INDEX
    assert torch.equal(item["input_ids"][mask], item["labels"][mask])
    text = tok.decode([t for t in item["input_ids"].tolist() if t != layout.image_token_id])
    assert text == ("<s>" + LLAVA_V1 + " USER: \nHow many objects are there? ASSISTANT: There are 2 objects in "
                    "this image.</s>USER: Is there a can in this image? ASSISTANT: Yes</s>")
