"""Round trip: train_vlm.py makes the tiny LLaVA memorise its answers; VLMInference gives them back.

This is the test that training and inference agree on everything between them: the prompt
format, the image padding, the box text, EOS, the adapter files and the base model they name.
"""
from __future__ import annotations

import json

import pytest

from fixtures.toy_data import shape_box, toy_records, write_toy_images
from vlm_core import boxes, prompts
from vlm_core.io_utils import write_json_atomic
from vlm_inference import predict
from vlm_inference import vlm_inference as vi
from vlm_inference.vlm_inference import VLMInference
from vlm_training import train_vlm

# The toy region question on scenes/green.png (32x48) asks about the drawn rectangle.
GREEN_BOX = shape_box(32, 48)
BLUE_BOX = [10, 10, 30, 30]
BLUE_ANSWER = "a yellow glass on the table"


def roundtrip_records() -> list[dict]:
    records = toy_records()
    records.append({
        "id": "scenes/blue.jpg#1", "image": "scenes/blue.jpg", "width": 40, "height": 40,
        "conversations": [
            {"from": "human", "value": "<image>\n" + prompts.REGION_DESCRIPTION_LABELED.format(
                label="glass", box=boxes.box_to_text(BLUE_BOX, 40, 40))},
            {"from": "gpt", "value": BLUE_ANSWER}],
        "qa_types": ["region_description"]})
    return records


def _question(record):
    return record["conversations"][0]["value"].removeprefix("<image>\n")


def _answer(record):
    return record["conversations"][1]["value"]


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """An adapter (and its merged model) trained on the toy records until it repeats them."""
    d = tmp_path_factory.mktemp("roundtrip")
    image_dir = write_toy_images(d / "images")
    records = roundtrip_records()
    data = d / "toy_llava.json"
    write_json_atomic(data, records)
    out = d / "vlm_model"
    rc = train_vlm.main(["--train_data", str(data), "--image_dir", str(image_dir), "--output_dir", str(out),
                         "--base_model", str(tiny_models["llava"]), "--use_lora", "--lora_r", "16",
                         "--lora_alpha", "32", "--lora_dropout", "0", "--learning_rate", "5e-3",
                         "--max_steps", "100", "--batch_size", str(len(records)), "--warmup_ratio", "0",
                         "--save_steps", "0", "--logging_steps", "50", "--seed", "0", "--merge_lora"])
    assert rc == 0
    return {"dir": d, "data": data, "images": image_dir, "records": records, "model": out}


def _by_type(records, qa_type):
    return [r for r in records if r["qa_types"][0] == qa_type]


def test_describe_and_answer_reproduce_the_trained_answers(trained, tiny_models):
    vlm = VLMInference(trained["model"])  # base model: the one adapter_config.json names
    assert vlm.kind == "adapter" and vlm.base_model == str(tiny_models["llava"])
    images, records = trained["images"], trained["records"]
    for record in _by_type(records, "count") + _by_type(records, "exists"):
        assert vlm.answer_question(images / record["image"], _question(record)) == _answer(record)
    green = next(r for r in records if r["image"] == "scenes/green.png")
    assert vlm.describe_object(images / "scenes/green.png", GREEN_BOX) == _answer(green)
    assert vlm.describe_object(images / "scenes/blue.jpg", BLUE_BOX, label="glass") == BLUE_ANSWER
    grounding = _by_type(records, "grounding")[0]
    assert vlm.answer_question(images / grounding["image"], _question(grounding)) == _answer(grounding)
    assert vlm.locate(images / grounding["image"], "the black paper") == \
        boxes.text_to_box(_answer(grounding), grounding["width"], grounding["height"])
    # All at once, batched with left padding: the same answers.
    assert vlm.answer_questions([images / r["image"] for r in records], [_question(r) for r in records],
                                batch_size=len(records)) == [_answer(r) for r in records]


def test_merged_model_and_explicit_base_give_the_same_answers(trained, tiny_models):
    images, records = trained["images"], trained["records"]
    for vlm in (VLMInference(trained["model"] / "merged"),
                VLMInference(trained["model"], base_model=str(tiny_models["llava"]))):
        assert vlm.answer_questions([images / r["image"] for r in records], [_question(r) for r in records]) == \
            [_answer(r) for r in records]


def test_predict_reproduces_every_reference(trained, tmp_path, capsys):
    out = tmp_path / "predictions.jsonl"
    assert predict.main(["--model_path", str(trained["model"]), "--data", str(trained["data"]),
                         "--image_dir", str(trained["images"]), "--output_file", str(out),
                         "--batch_size", "2"]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(trained["records"])
    assert all(r["answer"] == r["reference"] for r in lines), lines
    assert "5 answers written" in capsys.readouterr().out


def test_cli_prints_the_trained_description_and_answer(trained, tiny_models, capsys):
    images, records = trained["images"], trained["records"]
    common = ["--model_path", str(trained["model"]), "--base_model", str(tiny_models["llava"])]
    assert vi.main(common + ["--image", str(images / "scenes/blue.jpg"), "--bbox", *map(str, BLUE_BOX),
                             "--label", "glass"]) == 0
    assert capsys.readouterr().out.strip() == BLUE_ANSWER
    count = _by_type(records, "count")[0]
    assert vi.main(common + ["--image", str(images / count["image"]), "--question", _question(count)]) == 0
    assert capsys.readouterr().out.strip() == _answer(count)
