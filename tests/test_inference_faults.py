"""Inference given a damaged or mismatched model: one line and exit 2, never a traceback (issue 28).

A LoRA adapter (or a full model) whose ``.safetensors`` file is cut in half or empty, as a save or a copy
that died leaves it, and a LLaVA adapter put on a base model of the Qwen2-VL family. Each is given to
``VLMInference`` (an ``InferenceInputError``), to the ``vlm_inference.py`` command line and to ``predict.py``
(real subprocesses: exit 2, one line on stderr, nothing written).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.toy_data import write_toy_llava_dataset
from vlm_core.model_dir import FRAME_FILE, TRAIN_ARGS_FILE
from vlm_inference.vlm_inference import InferenceInputError, VLMInference
from vlm_training import train_vlm

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240
RERUN = "run the train_vlm.py command (or the save) again"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy LLaVA file and its images."""
    data, images, _ = write_toy_llava_dataset(tmp_path_factory.mktemp("inference_faults_data"))
    return data, images


@pytest.fixture(scope="module")
def adapter(tiny_models, toy, tmp_path_factory):
    """A LoRA adapter of the tiny LLaVA as train_vlm.py saves it (box_frame.json, train_args.json, the adapter
    config naming its base); one step is enough, the weights only have to be real."""
    data, images = toy
    out = tmp_path_factory.mktemp("inference_faults") / "vlm_model"
    assert train_vlm.main(["--train_data", str(data), "--image_dir", str(images), "--output_dir", str(out),
                           "--base_model", str(tiny_models["llava"]), "--use_lora", "--lora_r", "4",
                           "--lora_alpha", "8", "--max_steps", "1", "--batch_size", "4", "--save_steps", "0",
                           "--logging_steps", "1", "--seed", "0"]) == 0
    return out


def _run(script: str, *argv) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, script, *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def _one_line(done: subprocess.CompletedProcess) -> str:
    """The single error line of a run that must have refused its input with exit 2."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def _ask_cli(model, toy, *extra) -> subprocess.CompletedProcess:
    _, images = toy
    return _run("vlm_inference/vlm_inference.py", "--model_path", model, *extra,
                "--image", images / "scenes/red.png", "--question", "How many cans are there?")


def _predict(model, toy, out, *extra) -> subprocess.CompletedProcess:
    data, images = toy
    return _run("vlm_inference/predict.py", "--model_path", model, *extra, "--data", data, "--image_dir", images,
                "--output_file", out, "--max_new_tokens", "4")


def _damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2 if how == "cut in half" else 0)


# ------------------------------------------------------------------ a damaged .safetensors file
@pytest.mark.parametrize("how", ["cut in half", "empty"])
@pytest.mark.parametrize("kind", ["adapter", "full model"])
def test_a_damaged_weights_file_is_one_line_everywhere(adapter, tiny_models, toy, tmp_path, kind, how):
    model = tmp_path / "vlm_model"
    shutil.copytree(adapter if kind == "adapter" else tiny_models["llava"], model)
    weights = model / ("adapter_model.safetensors" if kind == "adapter" else "model.safetensors")
    _damage(weights, how)
    expected = f"{weights} is damaged"

    with pytest.raises(InferenceInputError) as caught:
        VLMInference(model)
    message = str(caught.value)
    assert expected in message and RERUN in message and "\n" not in message
    if how == "empty":
        assert "(empty)" in message

    line = _one_line(_ask_cli(model, toy))
    assert expected in line and RERUN in line

    out = tmp_path / "predictions.jsonl"
    line = _one_line(_predict(model, toy, out))
    assert expected in line and RERUN in line
    assert not out.exists()


def test_a_damaged_base_model_is_one_line(adapter, tiny_models, toy, tmp_path):
    """The base an adapter is put on (not checked up front: it may be a hub id) fails in one line as it loads."""
    base = tmp_path / "llava"
    shutil.copytree(tiny_models["llava"], base)
    _damage(base / "model.safetensors", "cut in half")
    with pytest.raises(InferenceInputError, match=f"--base_model: a weights file of {base} is damaged"):
        VLMInference(adapter, base_model=str(base))
    line = _one_line(_ask_cli(adapter, toy, "--base_model", base))
    assert f"a weights file of {base} is damaged" in line


# ------------------------------------------------------------------ an adapter on a base of another family
@pytest.mark.parametrize("told_by", [FRAME_FILE, TRAIN_ARGS_FILE, "adapter_config.json"])
def test_an_adapter_on_a_base_of_another_family_is_one_line(adapter, tiny_models, toy, tmp_path, told_by):
    """A LLaVA-1.5 adapter given --base_model of Qwen2-VL; the trained family is read from the box frame
    training saved, else from the base its train_args.json or (a peft adapter of another tool) its
    adapter_config.json names."""
    model = tmp_path / "vlm_model"
    shutil.copytree(adapter, model)
    order = (FRAME_FILE, TRAIN_ARGS_FILE, "adapter_config.json")
    for earlier in order[:order.index(told_by)]:  # what would be read before it
        (model / earlier).unlink()
    qwen = tiny_models["qwen2_vl"]
    expected = (f"--base_model {qwen} is a Qwen2-VL model, but the adapter in {model} was trained on a LLaVA-1.5 "
                f"model ({model / told_by}")

    with pytest.raises(InferenceInputError) as caught:
        VLMInference(model, base_model=str(qwen))
    assert expected in str(caught.value) and "pass a --base_model of the LLaVA-1.5 family" in str(caught.value)

    line = _one_line(_ask_cli(model, toy, "--base_model", qwen))
    assert expected in line

    out = tmp_path / "predictions.jsonl"
    line = _one_line(_predict(model, toy, out, "--base_model", qwen))
    assert expected in line
    assert not out.exists()

    # The base of its own family is still taken, named or given.
    assert VLMInference(model, base_model=str(tiny_models["llava"])).family.name == "llava"
