"""Errors that name the fix, and quiet logs (issue 27).

A file of another stage given where a stage expects its own, a folder given as an image, a normalised box
given as pixels, an output inside the images folder: each is one line naming what to run or pass instead,
exit code 2, nothing written. Summary lines count in the right number; progress bars in a log are plain
lines; the Makefile reinstalls when the requirement files change, not when their times do.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fixtures.toy_data import write_toy_llava_dataset
from vlm_core import runtime
from vlm_core.io_utils import InputError, write_json_atomic
from vlm_core.llava_format import is_llava_file, iter_llava_records
from vlm_core.runtime import plural, progress_bar, require_output_file

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _annotation(one_image: str = "a.png") -> dict:
    """A valid annotation file of one image with one object (data_annotation.py's output format)."""
    return {"images": [{
        "image": one_image, "width": 120, "height": 80, "caption": "a can on a table",
        "objects": [{"id": 0, "label": "can", "bbox": [10.0, 10.0, 60.0, 50.0], "score": 0.9,
                     "sources": ["yolo"], "description": "A red can."}],
        "qa": [{"question": "How many objects are there?", "answer": "There is 1 object in this image.",
                "type": "count", "object_ids": []}]}],
        "skipped": [], "meta": {"tool": "test"}}


@pytest.fixture
def data(tmp_path):
    """A LLaVA file, its images, and an annotation file beside them."""
    llava, images, _ = write_toy_llava_dataset(tmp_path / "toy")
    Image.new("RGB", (120, 80), (200, 30, 30)).save(images / "a.png")
    annotations = tmp_path / "annotations.json"
    write_json_atomic(annotations, _annotation())
    return {"llava": llava, "images": images, "annotations": annotations, "dir": tmp_path}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------- 1. an annotation file where LLaVA is read

def test_annotation_file_as_llava_names_the_conversion(data):
    with pytest.raises(InputError) as e:
        list(iter_llava_records(data["annotations"]))
    message = str(e.value)
    assert "found an annotation file" in message
    assert (f"python vlm_training/convert_to_llava_format.py --annotation_file {data['annotations']} "
            f"--output_file {data['dir'] / 'annotations_llava.json'}") in message


def test_annotation_jsonl_and_predictions_as_llava_are_named(tmp_path):
    jsonl = tmp_path / "annotations.jsonl"
    jsonl.write_text(json.dumps(_annotation()["images"][0]) + "\n" + json.dumps({"meta": {}}) + "\n")
    with pytest.raises(InputError, match="found an annotation file .* convert it first"):
        list(iter_llava_records(jsonl))
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"id": "a", "turn": 0, "answer": "x", "reference": "y"}) + "\n")
    with pytest.raises(InputError, match="found a predictions file"):
        list(iter_llava_records(predictions))
    # Any other object is still the plain format error.
    other = tmp_path / "other.json"
    other.write_text('{"records": []}')
    with pytest.raises(InputError, match=r"expected a JSON list \(a file starting with '\['\)$"):
        list(iter_llava_records(other))


def test_predict_refuses_an_annotation_file_before_the_model_loads(data, tiny_models, capsys):
    from vlm_inference import predict
    out = data["dir"] / "predictions.jsonl"
    rc = predict.main(["--model_path", str(tiny_models["llava"]), "--data", str(data["annotations"]),
                       "--image_dir", str(data["images"]), "--output_file", str(out)])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "found an annotation file" in line \
        and "convert_to_llava_format.py --annotation_file" in line
    assert not out.exists()


def test_train_refuses_an_annotation_file_with_the_command(data, tiny_models, capsys):
    from vlm_training import train_vlm
    out = data["dir"] / "model"
    rc = train_vlm.main(["--train_data", str(data["annotations"]), "--image_dir", str(data["images"]),
                         "--output_dir", str(out), "--base_model", str(tiny_models["llava"]), "--use_lora"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and f"{data['annotations']}: expected a JSON list of LLaVA conversations, found an annotation file" \
        in line
    assert "python vlm_training/convert_to_llava_format.py" in line
    assert not out.exists()


# --------------------------------------------------------------------- 2. a LLaVA file where predictions are read

def test_evaluate_names_a_llava_file_and_predict_py(data, capsys):
    from vlm_inference import evaluate
    assert is_llava_file(data["llava"]) and not is_llava_file(data["annotations"])
    out = data["dir"] / "metrics.json"
    rc = evaluate.main(["--predictions", str(data["llava"]), "--output_file", str(out)])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and f"--predictions: {data['llava']} is a LLaVA conversation file" in line
    assert f"python vlm_inference/predict.py --model_path MODEL --data {data['llava']}" in line
    assert not out.exists()


def test_evaluate_names_a_llava_jsonl_baseline_in_a_subprocess(data):
    llava_jsonl = data["dir"] / "test_llava.jsonl"
    llava_jsonl.write_text("".join(json.dumps(r) + "\n" for r in iter_llava_records(data["llava"])))
    predictions = data["dir"] / "predictions.jsonl"
    predictions.write_text(json.dumps({"id": "a", "turn": 0, "answer": "1", "reference": "1", "type": None}) + "\n")
    done = subprocess.run([sys.executable, "vlm_inference/evaluate.py", "--predictions", str(predictions),
                           "--baseline", str(llava_jsonl), "--output_file", str(data["dir"] / "m.json")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    line = _one_error_line(done.stderr)
    assert done.returncode == 2 and f"--baseline: {llava_jsonl} is a LLaVA conversation file" in line
    assert "predict.py writes the predictions evaluate.py scores" in line


# --------------------------------------------------------------------- 3. a folder given as --image

def test_folder_as_image_names_predict_and_its_flag(data, tiny_models, capsys):
    from vlm_inference import vlm_inference as vi
    rc = vi.main(["--model_path", str(tiny_models["llava"]), "--image", str(data["images"]),
                  "--question", "How many objects are there?"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and f"--image: {data['images']} is a folder, not an image file" in line
    assert f"python vlm_inference/predict.py --model_path MODEL --data QUESTIONS_llava.json " \
           f"--image_dir {data['images']}" in line
    with pytest.raises(ValueError, match=f"image: {data['images']} is a folder, not an image file; .*predict.py"):
        vi.load_image(data["images"])


# --------------------------------------------------------------------- 4. normalised boxes

def test_normalised_box_is_refused_with_its_pixel_box():
    from vlm_inference.vlm_inference import validate_bbox
    with pytest.raises(ValueError) as e:
        validate_bbox([0.1, 0.2, 0.5, 0.6], 120, 80)
    assert str(e.value) == ("bbox [0.1, 0.2, 0.5, 0.6]: every value is <= 1, so it looks normalised (0-1); boxes "
                            "are pixels x1 y1 x2 y2 of the displayed image (120x80): multiply x by the width and y "
                            "by the height, here [12, 16, 60, 48]")
    assert validate_bbox([0.1, 0.2, 0.5, 0.6], 120, 80, normalised=True) == pytest.approx([12, 16, 60, 48])
    # A genuine box at the origin that small covers one pixel at most: refused too; 2 pixels is a box.
    with pytest.raises(ValueError, match="looks normalised"):
        validate_bbox([0, 0, 1, 1], 120, 80)
    assert validate_bbox([0, 0, 2, 1], 120, 80) == [0, 0, 2, 1]


@pytest.fixture(scope="module")
def red_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("red") / "red.png"
    Image.new("RGB", (120, 80), (200, 30, 30)).save(path)
    return path


def test_cli_refuses_a_normalised_bbox_and_takes_it_with_the_flag(tiny_models, red_image, capsys):
    from vlm_inference import vlm_inference as vi
    base = ["--model_path", str(tiny_models["llava"]), "--image", str(red_image), "--max_new_tokens", "4"]
    assert vi.main(base + ["--bbox", "0.1", "0.2", "0.5", "0.6"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "boxes are pixels x1 y1 x2 y2" in line and "[12, 16, 60, 48], or pass --bbox_normalized" in line
    assert vi.main(base + ["--question", "What is this?", "--bbox_normalized"]) == 2
    assert "--bbox_normalized says how to read --bbox: give --bbox too" in _one_error_line(capsys.readouterr().err)
    # With the flag, the same answer as the pixel box gives.
    assert vi.main(base + ["--bbox", "0.1", "0.2", "0.5", "0.6", "--bbox_normalized"]) == 0
    normalised = capsys.readouterr().out
    assert vi.main(base + ["--bbox", "12", "16", "60", "48"]) == 0
    assert capsys.readouterr().out == normalised and normalised.strip()


def test_api_refuses_a_normalised_bbox(tiny_models, red_image):
    from vlm_inference.vlm_inference import VLMInference
    vlm = VLMInference(tiny_models["llava"])
    with pytest.raises(ValueError, match=r"looks normalised .* here \[12, 16, 60, 48\]$"):
        vlm.describe_object(red_image, [0.1, 0.2, 0.5, 0.6], max_new_tokens=2)


# --------------------------------------------------------------------- 5. outputs inside the images folder

def test_output_file_inside_an_input_folder_is_refused(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    with pytest.raises(InputError) as e:
        require_output_file(images / "sub" / "out.json", "--output_file", {"--images_dir": images})
    assert str(e.value) == (f"--output_file: {images / 'sub' / 'out.json'} is inside --images_dir ({images}); "
                            "write outputs elsewhere")
    assert require_output_file(tmp_path / "out.json", "--output_file", {"--images_dir": images}) \
        == tmp_path / "out.json"


def test_annotation_refuses_an_output_file_in_the_images_folder(data, tiny_models, capsys):
    from vlm_annotation import data_annotation
    out = data["images"] / "annotations.json"
    rc = data_annotation.main(["--images_dir", str(data["images"]), "--output_file", str(out),
                               "--yolo_model", str(tiny_models["yolo"]), "--captioner_model", str(tiny_models["blip"])])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and line == f"error: --output_file: {out} is inside --images_dir ({data['images']}); " \
                               "write outputs elsewhere"
    assert not out.exists()


def test_predict_refuses_an_output_file_in_the_image_dir(data, tiny_models, capsys):
    from vlm_inference import predict
    out = data["images"] / "predictions.jsonl"
    rc = predict.main(["--model_path", str(tiny_models["llava"]), "--data", str(data["llava"]),
                       "--image_dir", str(data["images"]), "--output_file", str(out)])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and f"--output_file: {out} is inside --image_dir ({data['images']})" in line
    assert not out.exists()


# --------------------------------------------------------------------- 6. plurals and quiet logs

def test_plural():
    assert [plural(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert plural(1, "class", "classes") == "1 class" and plural(3, "class", "classes") == "3 classes"
    assert plural(1, "Q&A pair", width=4) == "   1 Q&A pair"


def test_summary_lines_count_one_in_the_singular(data, capsys):
    from vlm_annotation import export_annotations
    from vlm_training import split_data
    assert export_annotations.main(["--annotation_file", str(data["annotations"]), "--format", "coco",
                                    "--output_file", str(data["dir"] / "coco.json")]) == 0
    assert "exported 1 image, 1 object, 1 class as COCO" in capsys.readouterr().out
    assert split_data.main(["--input_file", str(data["annotations"]), "--train_file", str(data["dir"] / "tr.json"),
                            "--val_file", str(data["dir"] / "va.json"), "--test_file", str(data["dir"] / "te.json"),
                            "--train_ratio", "1", "--val_ratio", "0"]) == 0
    out = capsys.readouterr().out
    assert "split 1 image (seed" in out and "     1 image,       1 Q&A pair ->" in out
    assert "1 images" not in out and "1 Q&A pairs" not in out


def test_progress_bar_in_a_log_is_plain_lines(monkeypatch):
    log = io.StringIO()  # not a terminal, as stderr redirected to a file
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(runtime, "LOG_PROGRESS_INTERVAL_S", 0.0)
    for _ in progress_bar(range(3), desc="outer", unit="img", position=0, miniters=1):  # every update shown
        for _ in progress_bar(range(2), desc="inner", position=1, leave=False):
            pass
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("outer:   0%") and lines[-1].startswith("outer: 100%|") and "3/3" in lines[-1]
    assert len(lines) == 4 and all(line.startswith("outer: ") for line in lines)  # the inner bars: not in a log


def test_training_bars_are_off_when_stderr_is_not_a_terminal(tiny_models, tmp_path, monkeypatch):
    from vlm_training import train_vlm
    llava, images, _ = write_toy_llava_dataset(tmp_path)
    argv = ["--train_data", str(llava), "--image_dir", str(images), "--output_dir", str(tmp_path / "m"),
            "--base_model", str(tiny_models["llava"])]
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert train_vlm.parse_args(argv)[2].disable_tqdm is True
    assert train_vlm.parse_args(argv + ["--disable_tqdm", "false"])[2].disable_tqdm is False


# --------------------------------------------------------------------- 7. the Makefile's install stamp

@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_venv_reinstalls_when_the_requirements_change_not_their_times(tmp_path):
    for name in ("Makefile", "requirements.txt", "requirements-test.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    log = tmp_path / "pip.log"
    fake = tmp_path / ".venv" / "bin" / "python"  # records what the recipe asks of the venv's python
    fake.parent.mkdir(parents=True)
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n")
    fake.chmod(0o755)

    def installs() -> int:
        before = log.read_text().count("-r requirements.txt") if log.exists() else 0
        subprocess.run(["make", "-s", "venv"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
        return log.read_text().count("-r requirements.txt") - before

    assert installs() == 1                      # no stamp yet
    assert installs() == 0                      # nothing changed
    for name in ("requirements.txt", "pyproject.toml"):  # a fresh clone: new times, the same contents
        os.utime(tmp_path / name)
    assert installs() == 0
    req = tmp_path / "requirements.txt"
    old = os.stat(tmp_path / ".venv" / ".installed").st_mtime - 3600
    req.write_text(req.read_text() + "\n# changed\n")
    os.utime(req, (old, old))                   # changed, yet older than the stamp
    assert installs() == 1
    assert installs() == 0


# --------------------------------------------------------------------- 8. demo.sh's threads

@pytest.mark.parametrize("preset, expected", [(None, "1 1"), ("4", "4 1")])
def test_demo_sets_one_thread_unless_the_user_did(preset, expected):
    line = next(line for line in (ROOT / "scripts" / "demo.sh").read_text().splitlines()
                if line.startswith("export OMP_NUM_THREADS="))
    env = {k: v for k, v in ENV.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if preset:
        env["OMP_NUM_THREADS"] = preset
    done = subprocess.run(["bash", "-c", f'{line}\necho "$OMP_NUM_THREADS $MKL_NUM_THREADS"'], env=env,
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == expected
