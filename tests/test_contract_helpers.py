"""Atomic writers, JSONL resume, prompt wording helpers, CLI path checks."""
import json
import os

import pytest

from vlm_annotation import prompts
from vlm_annotation.cli import report_input_errors, require_model
from vlm_annotation.io_utils import InputError, JsonlAppender, iter_jsonl, write_json_atomic, write_jsonl_atomic


def test_atomic_writers_leave_no_temp_files(tmp_path):
    write_json_atomic(tmp_path / "a" / "x.json", {"k": [1, 2]})
    write_jsonl_atomic(tmp_path / "y.jsonl", [{"a": 1}, {"a": 2}])
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"k": [1, 2]}
    assert [r for _, r in iter_jsonl(tmp_path / "y.jsonl")] == [{"a": 1}, {"a": 2}]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "x.json", "y.jsonl"]
    # Not the 0600 of a temp file: outputs get the usual permissions of the umask.
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "y.jsonl").stat().st_mode & 0o777 == 0o666 & ~mask


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"old": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_appender_drops_a_partial_last_line(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')              # a killed writer's remains
    assert [r for _, r in iter_jsonl(path)] == [{"a": 1}]
    with JsonlAppender(path) as out:
        out.write({"a": 3})
    assert [r for _, r in iter_jsonl(path)] == [{"a": 1}, {"a": 3}]
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(InputError, match="line 2"):
        list(iter_jsonl(path))


def test_wording_helpers():
    assert [prompts.plural(w) for w in ("glass", "bottle", "paper", "battery", "box", "person", "tin can")] == \
        ["glasses", "bottles", "papers", "batteries", "boxes", "people", "tin cans"]
    assert prompts.count_answer(3) == "There are 3 objects in this image."
    assert prompts.count_answer(1) == "There is 1 object in this image."
    assert prompts.count_answer(0) == "There are no objects in this image."
    assert prompts.article("apple") == "an" and prompts.article("can") == "a"


def test_prompt_format_save_load(tmp_path):
    fmt = prompts.PromptFormat(first_turn="<image>\nQ: {question}\nA:", next_turn="Q: {question}\nA:")
    fmt.save(tmp_path)
    assert prompts.PromptFormat.load(tmp_path) == fmt
    assert prompts.PromptFormat.load(tmp_path / "none") == prompts.PromptFormat()
    assert fmt.prompt("hi") == "<image>\nQ: hi\nA:"
    with pytest.raises(ValueError):
        prompts.PromptFormat.from_dict({"first_turn": "no placeholder <image>"})


def test_require_model_and_error_reporting(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="--base_model: models/llava is not a local path, and the hub is offline"):
        require_model("models/llava", "--base_model")      # the tests run offline (conftest)
    (tmp_path / "cache" / "models--llava-hf--llava-1.5-7b-hf").mkdir(parents=True)
    assert require_model("llava-hf/llava-1.5-7b-hf", "--base_model") == "llava-hf/llava-1.5-7b-hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    assert require_model("org/not-cached", "--base_model") == "org/not-cached"
    assert require_model(str(tmp_path), "--x") == str(tmp_path)
    with pytest.raises(InputError, match="--yolo_model: model not found"):
        require_model("models/yolo/yolov8x/best.pt", "--yolo_model")

    @report_input_errors
    def main():
        raise InputError("f.json: images[0].bbox: bad")

    assert main() == 2
    assert capsys.readouterr().err == "error: f.json: images[0].bbox: bad\n"
