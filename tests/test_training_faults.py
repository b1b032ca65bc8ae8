"""Training under faults (issue 16): Ctrl-C, SIGTERM and kill -9 at the worst moments, on real subprocesses.

Every case ends the same way: running the same command again finishes the run, and its adapter equals
the one of an uninterrupted run (the resume is exact), its metrics cover the whole run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures.toy_data import write_toy_llava_dataset
from vlm_core.model_dir import SAVING_MARKER, TRAIN_ARGS_FILE, half_written
from vlm_training.train_vlm import main
from vlm_training.vlm_trainer import resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
# 2 steps an epoch on the 4 toy records; a checkpoint every 2 steps, the last at step 8.
RUN = ["--use_lora", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--learning_rate", "1e-2",
       "--batch_size", "2", "--max_steps", str(STEPS), "--save_steps", "2", "--save_total_limit", "1",
       "--logging_steps", "1", "--system_prompt", "none"]
# Runs train_vlm.main in a subprocess; SLOW_SAVE_STEP / SLOW_FINAL hold the process inside the write of a
# checkpoint's trainer_state.json (the Trainer writes it last) or of the final model, so that kill -9
# lands exactly there; SLOW_FLAG is created when it is there.
RUNNER = """
import os, sys, time
from transformers.trainer_callback import TrainerState
from vlm_training import train_vlm

def hold():
    open(os.environ["SLOW_FLAG"], "w").close()
    time.sleep(120)

save_to_json = TrainerState.save_to_json
def slow_save_to_json(self, path):
    if self.global_step == int(os.environ.get("SLOW_SAVE_STEP", "-1")):
        hold()
    return save_to_json(self, path)
TrainerState.save_to_json = slow_save_to_json

remove_stale = train_vlm.remove_stale_model_files
def slow_remove_stale(*a):
    if os.environ.get("SLOW_FINAL"):
        hold()
    return remove_stale(*a)
train_vlm.remove_stale_model_files = slow_remove_stale
sys.exit(train_vlm.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_llava_dataset(tmp_path_factory.mktemp("toy"))


def argv_for(toy, tiny_models, out) -> list[str]:
    json_path, image_dir, _ = toy
    return ["--train_data", str(json_path), "--image_dir", str(image_dir), "--output_dir", str(out),
            "--base_model", str(tiny_models["llava"])] + RUN


@pytest.fixture(scope="module")
def reference(toy, tiny_models, tmp_path_factory):
    """The same run, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "model"
    assert main(argv_for(toy, tiny_models, out)) == 0
    return out


def start(argv, tmp_path, **env) -> tuple[subprocess.Popen, Path, Path]:
    """The documented command (``python vlm_training/train_vlm.py ...``), or RUNNER when ``env`` asks to hold."""
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    command = ["-c", RUNNER] if env else ["vlm_training/train_vlm.py"]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                    TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg", **env)
    with open(stdout, "w") as out, open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, *command, *argv], cwd=REPO, env=full_env, stdout=out,
                                stderr=err)
    return proc, stdout, stderr


def wait_for(condition, proc, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_same_as(reference: Path, out: Path) -> None:
    a, b = load_file(reference / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def assert_whole_run_metrics(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == STEPS
    assert [e["step"] for e in metrics["train_loss"]] == list(range(1, STEPS + 1))
    # seconds and examples of every session: 8 steps x 2 examples
    assert metrics["train_samples_per_second"] * metrics["train_runtime_s"] == pytest.approx(2 * STEPS)
    assert json.loads((out / TRAIN_ARGS_FILE).read_text())["status"] == "complete"
    assert not (out / SAVING_MARKER).exists()
    return metrics


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_save_a_checkpoint_and_the_same_command_continues(signum, toy, tiny_models, reference,
                                                                             tmp_path, capsys):
    out = tmp_path / "model"
    argv = argv_for(toy, tiny_models, out)
    proc, stdout, stderr = start(argv, tmp_path)
    wait_for(lambda: "'loss'" in stdout.read_text(), proc, "the first logged step")
    proc.send_signal(signum)
    assert proc.wait(timeout=300) == (130 if signum == signal.SIGINT else 143)
    last = stderr.read_text().strip().splitlines()[-1]
    what = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    assert last.startswith(f"{what} at step ") and last.endswith(
        "; run the same command again to continue from there"), last
    step = int(last.split(" at step ")[1].split()[0])
    assert 1 <= step < STEPS and f"checkpoint saved to {out / f'checkpoint-{step}'};" in last
    state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
    assert state["global_step"] == step
    # --save_total_limit 1: rotation kept the checkpoint of the interruption, the newest
    assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{step}"]
    assert json.loads((out / TRAIN_ARGS_FILE).read_text())["status"] == "training"
    assert not (out / "adapter_model.safetensors").exists()       # no final model from a stopped run

    capsys.readouterr()
    assert main(argv) == 0                                         # the same command, nothing added
    assert f"continuing from {out / f'checkpoint-{step}'}" in capsys.readouterr().out
    assert_whole_run_metrics(out)
    assert_same_as(reference, out)


def test_kill_9_while_a_checkpoint_is_written(toy, tiny_models, reference, tmp_path, capsys):
    out = tmp_path / "model"
    argv = argv_for(toy, tiny_models, out)
    flag = tmp_path / "in_save"
    proc, _, _ = start(argv, tmp_path, SLOW_SAVE_STEP="4", SLOW_FLAG=str(flag))
    wait_for(flag.exists, proc, "the save of checkpoint-4")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (out / "checkpoint-4").is_dir() and not (out / "checkpoint-4" / "trainer_state.json").exists()
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()

    capsys.readouterr()
    assert main(argv + ["--resume_from_checkpoint", "latest"]) == 0
    printed = capsys.readouterr().out
    assert "skipping and removing checkpoint-4: no readable trainer_state.json (its save was interrupted)" in printed
    assert f"continuing from {out / 'checkpoint-2'}" in printed
    assert_whole_run_metrics(out)
    assert_same_as(reference, out)


def test_kill_9_during_the_final_save_and_a_second_run_meanwhile(toy, tiny_models, reference, tmp_path, capsys):
    out = tmp_path / "model"
    argv = argv_for(toy, tiny_models, out)
    flag = tmp_path / "in_final_save"
    proc, _, _ = start(argv, tmp_path, SLOW_FINAL="1", SLOW_FLAG=str(flag))
    wait_for(flag.exists, proc, "the final save")
    # meanwhile, the same command a second time: refused in one line naming the first run
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is being written by another run (pid " in err[0] and str(proc.pid) in err[0], err
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    # the half-written folder says so
    assert (out / SAVING_MARKER).is_file() and half_written(out)
    assert json.loads((out / TRAIN_ARGS_FILE).read_text())["status"] == "training"

    assert main(argv) == 0                       # not refused as "a model train_vlm.py did not write"
    assert f"continuing from {out / f'checkpoint-{STEPS}'}" in capsys.readouterr().out
    assert_whole_run_metrics(out)
    assert_same_as(reference, out)
    assert not (out / ".final.tmp").exists()


# --------------------------------------------------------------------------- which checkpoint, pure logic
def _checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


SETTINGS = {"base_model": "m", "use_lora": True, "lora_r": 4, "lora_alpha": 8, "train_projector": False,
            "train_vision_tower": False}


def _record(out: Path, status: str, **changes) -> None:
    (out / TRAIN_ARGS_FILE).write_text(json.dumps(SETTINGS | changes | {"status": status}))


def test_which_checkpoint_a_run_continues_from(tmp_path):
    from vlm_core.io_utils import InputError
    out = tmp_path / "m"
    c2, c4, c6 = (_checkpoint(out, step, complete) for step, complete in ((2, True), (4, True), (6, False)))
    # an interrupted run: its newest complete checkpoint; the incomplete one is skipped (the caller removes it)
    _record(out, "training")
    assert resolve_checkpoint(None, out, SETTINGS) == (str(c4), [c6], (
        f"skipping and removing checkpoint-6: no readable trainer_state.json (its save was interrupted); "
        f"continuing from {c4} (the newest intact checkpoint)"))
    # 'latest' says the same explicitly; a folder is taken as given
    assert resolve_checkpoint("latest", out, SETTINGS)[:2] == (str(c4), [c6])
    assert resolve_checkpoint(str(c2), out, SETTINGS) == (str(c2), [], f"continuing from {c2}")
    # checkpoints of other settings do not fit: one line says what to do
    with pytest.raises(InputError, match="trained with --lora_r 4; rerun with those flags"):
        resolve_checkpoint(None, out, SETTINGS | {"lora_r": 8})
    # a finished run: a plain rerun starts afresh and its checkpoints go (a later resume must not pick one)
    _record(out, "complete")
    assert resolve_checkpoint(None, out, SETTINGS) == (
        None, [c6, c4, c2], "starting afresh: removing the 3 checkpoints of the earlier finished run")
    assert c6.is_dir() and c2.is_dir()                    # nothing is removed before the inputs are checked
    # a folder with no record of this script: nothing is removed
    other = tmp_path / "other"
    _checkpoint(other, 3)
    assert resolve_checkpoint(None, other, SETTINGS) == (None, [], "")
    assert resolve_checkpoint("latest", tmp_path / "new", SETTINGS)[:2] == (None, [])
