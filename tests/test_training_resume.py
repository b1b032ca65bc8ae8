"""Training runs that must resume right (issue 28): a checkpoint at the last step is not trained one step
further, a damaged newest checkpoint is reported and the one before it used, and a closed stdout reader
(`train_vlm.py ... | head`) does not kill the run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures.toy_data import write_toy_llava_dataset
from vlm_core.model_dir import TRAIN_ARGS_FILE
from vlm_training.train_vlm import main
from vlm_training.vlm_trainer import MANIFEST_FILE, checkpoint_problem

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
# 2 steps an epoch on the 4 toy records: checkpoints at steps 3 and 6 (mid-epoch and at the end).
RUN = ["--use_lora", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--learning_rate", "1e-2",
       "--lr_scheduler_type", "constant", "--batch_size", "2", "--max_steps", str(STEPS), "--save_steps", "3",
       "--save_total_limit", "2", "--logging_steps", "1", "--system_prompt", "none"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_llava_dataset(tmp_path_factory.mktemp("toy"))


def argv_for(toy, tiny_models, out) -> list[str]:
    json_path, image_dir, _ = toy
    return ["--train_data", str(json_path), "--image_dir", str(image_dir), "--output_dir", str(out),
            "--base_model", str(tiny_models["llava"])] + RUN


@pytest.fixture(scope="module")
def reference(toy, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "model"
    assert main(argv_for(toy, tiny_models, out)) == 0
    return out


def adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def interrupted_copy(reference: Path, tmp_path: Path) -> Path:
    """The reference run as a kill during its final save leaves it: checkpoints, status "training"."""
    out = tmp_path / "model"
    shutil.copytree(reference, out, symlinks=True)
    record = json.loads((out / TRAIN_ARGS_FILE).read_text())
    (out / TRAIN_ARGS_FILE).write_text(json.dumps(record | {"status": "training"}))
    (out / "adapter_model.safetensors").unlink()
    return out


def test_checkpoints_are_sealed_with_a_manifest(reference):
    for step in (3, STEPS):
        folder = reference / f"checkpoint-{step}"
        assert (folder / MANIFEST_FILE).is_file() and checkpoint_problem(folder) is None


def test_latest_of_a_finished_run_is_not_trained_a_step_further(reference, toy, tiny_models, tmp_path, capsys):
    out = tmp_path / "model"
    shutil.copytree(reference, out, symlinks=True)
    capsys.readouterr()
    assert main(argv_for(toy, tiny_models, out) + ["--resume_from_checkpoint", "latest"]) == 0
    printed = capsys.readouterr().out
    assert f"trained {STEPS} steps" in printed, printed
    assert same(adapter(out), adapter(reference))


def test_a_kill_during_the_final_save_finishes_without_another_step(reference, toy, tiny_models, tmp_path, capsys):
    out = interrupted_copy(reference, tmp_path)
    assert main(argv_for(toy, tiny_models, out)) == 0
    assert f"trained {STEPS} steps" in capsys.readouterr().out
    assert same(adapter(out), adapter(reference))


@pytest.mark.parametrize("damage", ["truncate optimizer.pt", "flip a bit of the adapter", "edit trainer_state.json"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(reference, toy, tiny_models, tmp_path, capsys,
                                                                   damage):
    out = interrupted_copy(reference, tmp_path)
    newest = out / f"checkpoint-{STEPS}"
    if damage.startswith("truncate"):
        data = (newest / "optimizer.pt").read_bytes()
        (newest / "optimizer.pt").write_bytes(data[: len(data) // 2])
    elif damage.startswith("flip"):
        data = bytearray((newest / "adapter_model.safetensors").read_bytes())
        data[-5] ^= 0x01
        (newest / "adapter_model.safetensors").write_bytes(bytes(data))
    else:
        state = json.loads((newest / "trainer_state.json").read_text())
        (newest / "trainer_state.json").write_text(json.dumps(state | {"global_step": STEPS + 1}))
    assert checkpoint_problem(newest) is not None
    capsys.readouterr()
    assert main(argv_for(toy, tiny_models, out)) == 0
    printed = capsys.readouterr().out
    assert f"skipping and removing checkpoint-{STEPS}:" in printed and "checkpoint-3" in printed, printed
    # The rerun from checkpoint-3 is exact: the same adapter as the uninterrupted run.
    assert same(adapter(out), adapter(reference))


def test_a_reader_that_goes_away_does_not_kill_the_run(toy, tiny_models, tmp_path, reference):
    out = tmp_path / "model"
    proc = subprocess.Popen([sys.executable, str(REPO / "vlm_training" / "train_vlm.py"),
                             *argv_for(toy, tiny_models, out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO)
    proc.stdout.readline()   # `| head -1`: one line, then the reader is gone
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err[-2000:]
    assert "BrokenPipe" not in err
    assert json.loads((out / TRAIN_ARGS_FILE).read_text())["status"] == "complete"
    assert same(adapter(out), adapter(reference))


def test_a_full_disk_is_one_line_and_the_same_command_finishes(reference, toy, tiny_models, tmp_path):
    """torch.save fails with "iostream error" and safetensors with its own error when the disk fills up
    during a checkpoint: both were tracebacks (issue 28); now one line, exit 1, and a rerun with room finishes."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tiny tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "model"
        argv = [sys.executable, str(REPO / "vlm_training" / "train_vlm.py"), *argv_for(toy, tiny_models, out)]
        full = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
        assert full.returncode == 1, full.stderr[-3000:]
        assert "Traceback" not in full.stderr
        assert f"error: disk full: {out} (No space left on device); free space and run the same command again" \
            in full.stderr.splitlines()
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"trained {STEPS} steps" in done.stdout
        assert same(adapter(out), adapter(reference))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_sighup_saves_a_checkpoint_like_sigterm_and_the_same_command_continues(reference, toy, tiny_models, tmp_path):
    """A closed terminal or ssh session (SIGHUP) killed the run with nothing saved (issue 28)."""
    out = tmp_path / "model"
    argv = [sys.executable, str(REPO / "vlm_training" / "train_vlm.py"), *argv_for(toy, tiny_models, out),
            "--max_steps", "12", "--save_steps", "6"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    for line in proc.stdout:              # the first logged step: training is under way
        if "'loss'" in line:
            break
    proc.send_signal(signal.SIGHUP)
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 129, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("terminated (SIGHUP) at step ") and "checkpoint saved to" in last, last
    step = int(last.split(" at step ")[1].split()[0])
    assert (out / f"checkpoint-{step}" / MANIFEST_FILE).is_file()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"continuing from {out / f'checkpoint-{step}'}" in done.stdout and "trained 12 steps" in done.stdout


def test_output_dir_dot_trains_into_the_current_folder(toy, tiny_models, tmp_path):
    """`train_vlm.py --output_dir .` was a ValueError traceback (the lock path of '.'; issue 28)."""
    here = tmp_path / "run"
    here.mkdir()
    json_path, image_dir, _ = toy
    done = subprocess.run([sys.executable, str(REPO / "vlm_training" / "train_vlm.py"), "--train_data", str(json_path),
                           "--image_dir", str(image_dir), "--output_dir", ".", "--base_model", str(tiny_models["llava"]),
                           *RUN, "--max_steps", "2"], cwd=here, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (here / "adapter_model.safetensors").is_file() and not (tmp_path / "run.lock").exists()
