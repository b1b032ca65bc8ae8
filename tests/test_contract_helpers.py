"""Atomic writers, JSONL resume, prompt wording helpers, CLI path checks."""
import json
import os

import pytest

from vlm_core import prompts
from vlm_core.io_utils import InputError, JsonlAppender, RecordWriter, iter_jsonl, write_json_atomic
from vlm_core.runtime import report_input_errors, require_model


def test_atomic_writers_leave_no_temp_files(tmp_path):
    write_json_atomic(tmp_path / "a" / "x.json", {"k": [1, 2]})
    with RecordWriter(tmp_path / "y.jsonl", style="jsonl") as w:
        w.write_many([{"a": 1}, {"a": 2}])
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


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    path = tmp_path / "u.jsonl"
    with RecordWriter(path, style="jsonl") as w:
        w.write_many([{"a": "x\u2028y"}, {"a": "z"}])
    assert [r for _, r in iter_jsonl(path)] == [{"a": "x\u2028y"}, {"a": "z"}]


def test_unreadable_inputs_are_one_line_errors(tmp_path):
    from vlm_core.io_utils import read_json
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_json(tmp_path / "bin.json")
    with pytest.raises(InputError, match="not UTF-8 text"):
        list(iter_jsonl(tmp_path / "bin.json"))
    with pytest.raises(InputError, match="is a directory"):
        read_json(tmp_path)


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    @report_input_errors
    def main():
        raise KeyboardInterrupt

    assert main() == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted:") and len(err.strip().splitlines()) == 1


def test_output_paths_are_checked_before_any_work(tmp_path):
    from vlm_core.runtime import require_output_dir, require_output_file
    src = tmp_path / "in.json"
    src.write_text("{}")
    with pytest.raises(InputError, match="--out: .* is the same file as --in"):
        require_output_file(src, "--out", {"--in": src})
    with pytest.raises(InputError, match="is not a directory"):
        require_output_file(src / "x.json", "--out")              # its parent is a file
    with pytest.raises(InputError, match="is a directory"):
        require_output_file(tmp_path, "--out")
    assert require_output_file(tmp_path / "new" / "x.json", "--out", {"--in": src}) == tmp_path / "new" / "x.json"
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(InputError, match="is inside --images_dir"):
        require_output_dir(images / "review", "--output_dir", {"--images_dir": images})
    with pytest.raises(InputError, match="exists and is not a directory"):
        require_output_dir(src, "--output_dir")
    assert require_output_dir(tmp_path / "review", "--output_dir", {"--images_dir": images}) == tmp_path / "review"


def test_devices_and_seeds_are_checked():
    from vlm_core.runtime import check_seed, resolve_device
    assert resolve_device("cpu") == "cpu"
    for bad, message in (("bogus", "not a device"), ("cuda:7", "CUDA"), ("mps", "MPS"), ("meta", "use auto")):
        torch = __import__("torch")
        if (bad.startswith("cuda") and torch.cuda.device_count() > 7) or (bad == "mps" and
                                                                          torch.backends.mps.is_available()):
            continue
        with pytest.raises(InputError, match=message):
            resolve_device(bad)
    assert check_seed(0) == 0 and check_seed(2**32 - 1) == 2**32 - 1
    for bad in (-1, 2**32):
        with pytest.raises(InputError, match="--seed must be in 0..4294967295"):
            check_seed(bad)


def test_yolo_weights_official_names_online_and_offline(tmp_path, monkeypatch):
    """Ultralytics downloads its official checkpoints by name: accepted with network, one line offline."""
    from vlm_core.runtime import require_yolo_weights
    monkeypatch.chdir(tmp_path)
    for name in ("yolov8x.pt", "yolo11x.pt", "rtdetr-l.pt"):
        with pytest.raises(InputError, match=f"--yolo_model: {name} is an Ultralytics weights name .* offline"):
            require_yolo_weights(name)                      # the tests run offline (conftest)
    with pytest.raises(InputError, match="--yolo_model: model not found: models/yolov8x.pt"):
        require_yolo_weights("models/yolov8x.pt")           # a path is a local file, never a download
    (tmp_path / "best.pt").write_bytes(b"x")
    assert require_yolo_weights("best.pt") == "best.pt"
    with pytest.raises(InputError, match="is not a file"):
        require_yolo_weights(str(tmp_path))
    for var in ("YOLO_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "0")
    assert [require_yolo_weights(n) for n in ("yolov8x.pt", "yolo11x.pt", "rtdetr-l.pt")] == \
        ["yolov8x.pt", "yolo11x.pt", "rtdetr-l.pt"]
    with pytest.raises(InputError, match="model not found: yolov8q.pt"):
        require_yolo_weights("yolov8q.pt")


def test_yolo_detector_takes_an_official_name(tiny_models, tmp_path, monkeypatch):
    """The detector passes an official name on to Ultralytics (which would download it) instead of refusing
    it as a missing file; the download is stood in for by the tiny checkpoint."""
    from vlm_annotation import detectors
    real_import = detectors.import_ultralytics
    asked = []

    def with_download():
        YOLO = real_import()

        def load(name):
            asked.append(name)
            return YOLO(str(tiny_models["yolo"]) if name == "yolov8n.pt" else name)
        return load

    monkeypatch.setattr(detectors, "import_ultralytics", with_download)
    monkeypatch.chdir(tmp_path)
    detector = detectors.YoloDetector("yolov8n.pt", "cpu", detectors.ClassMap(), 0.25, 64, 5, 1)
    assert asked == ["yolov8n.pt"] and detector.vocabulary()
