"""Training with two processes (issue 28: the README says several GPUs work through torchrun, and no test had
ever trained with more than one process). On the CPU with gloo: ``torchrun --nproc_per_node 2`` equals one
process with the same global batch, only rank 0 writes into the output folder, and killing one rank mid-run
then running the same command again finishes with the adapter of an uninterrupted two-process run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fixtures.toy_data import write_toy_llava_dataset
from vlm_core.model_dir import TRAIN_ARGS_FILE

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
# 4 toy records and a global batch of 4 (one process x 4, or two x 2): every step sees every record, so the
# two set-ups differ only by the order of float sums in the gradient all-reduce.
RUN = ["--use_lora", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--learning_rate", "1e-2",
       "--lr_scheduler_type", "constant", "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
       "--system_prompt", "none", "--seed", "1"]
TOLERANCE = 1e-5   # measured: 2e-7 largest difference between the adapters (weights up to 0.15)
# Runs train_vlm.main under torchrun; records its pid, slows each step when asked (so a kill lands mid-run),
# and, in every rank but 0, records any file it opens for writing inside the output folder.
RUNNER = """
import os, re, sys, time
rank, work = os.environ["RANK"], os.environ["DDP_WORK"]
open(os.path.join(work, f"pid.{rank}"), "w").write(str(os.getpid()))
out = os.path.realpath(sys.argv[sys.argv.index("--output_dir") + 1])

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def audit(event, args):
    # Opens for writing (Python's open and os.open), renames, removals and new folders inside the output folder.
    if rank == "0" or event not in ("open", "os.rename", "os.remove", "os.mkdir", "shutil.rmtree"):
        return
    if event == "open" and not ((isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
                                or (args[1] is None and isinstance(args[2], int) and args[2] & WRITE_FLAGS)):
        return
    paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
    # The Trainer makes each checkpoint folder on every process (exist_ok), where each writes its own RNG
    # state (rng_state_<rank>.pth, by torch's C++ writer, for an exact resume): nothing else is theirs to write.
    if event == "os.mkdir" and re.fullmatch(r"checkpoint-\\d+", os.path.basename(os.fsdecode(paths[0]))):
        return
    if any(os.path.realpath(os.fsdecode(a)).startswith(out) for a in paths):
        with open(os.path.join(work, "writes_by_other_ranks"), "a") as f:
            f.write(f"{event} {paths}\\n")
sys.addaudithook(audit)

from vlm_training import train_vlm
from vlm_training.vlm_trainer import VLMTrainer
if os.environ.get("SLOW_STEP"):
    step = VLMTrainer.training_step
    def slow_step(self, *a, **k):
        time.sleep(float(os.environ["SLOW_STEP"]))
        return step(self, *a, **k)
    VLMTrainer.training_step = slow_step
sys.exit(train_vlm.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models):
    work = tmp_path_factory.mktemp("ddp")
    json_path, image_dir, _ = write_toy_llava_dataset(work / "toy")
    (work / "runner.py").write_text(RUNNER)
    common = ["--train_data", str(json_path), "--image_dir", str(image_dir),
              "--base_model", str(tiny_models["llava"])] + RUN
    return work, common


def env_for(work: Path, **extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DDP_WORK": str(work),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


def torchrun(work: Path, common: list[str], out: Path, **extra) -> subprocess.Popen:
    return subprocess.Popen([TORCHRUN, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
                             str(work / "runner.py"), *common, "--batch_size", "2", "--output_dir", str(out)],
                            cwd=REPO, env=env_for(work, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def two_processes(setup):
    work, common = setup
    out = work / "two"
    proc = torchrun(work, common, out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return out, stdout


def test_two_processes_equal_one_with_the_same_global_batch(setup, two_processes):
    work, common = setup
    one = work / "one"
    done = subprocess.run([sys.executable, str(REPO / "vlm_training" / "train_vlm.py"), *common, "--batch_size", "4",
                           "--output_dir", str(one)], cwd=REPO, env=env_for(work), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    two, stdout = two_processes
    assert json.loads((two / TRAIN_ARGS_FILE).read_text())["world_size"] == 2
    assert stdout.count("trained 4 steps") == 1   # one summary, from rank 0
    assert largest_difference(adapter(one), adapter(two)) < TOLERANCE
    losses = [[e["loss"] for e in json.loads((d / "metrics.json").read_text())["train_loss"]] for d in (one, two)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_only_rank_0_writes_into_the_output_folder(setup, two_processes):
    work, _ = setup
    assert not (work / "writes_by_other_ranks").exists(), (work / "writes_by_other_ranks").read_text()


def test_killing_one_rank_then_the_same_command_resumes_to_the_same_adapter(setup, two_processes):
    work, common = setup
    out = work / "killed"
    for pid_file in work.glob("pid.*"):
        pid_file.unlink()
    proc = torchrun(work, common, out, SLOW_STEP="0.3")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out / "checkpoint-2" / "checkpoint_manifest.json").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    os.kill(int((work / "pid.1").read_text()), signal.SIGKILL)   # one rank dies; torchrun stops the other
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert json.loads((out / TRAIN_ARGS_FILE).read_text())["status"] == "training"
    rerun = torchrun(work, common, out)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    assert "continuing from" in stdout and "trained 4 steps" in stdout
    two, _ = two_processes
    assert largest_difference(adapter(out), adapter(two)) < TOLERANCE
    assert not (work / "writes_by_other_ranks").exists()
