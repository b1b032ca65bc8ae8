"""Every stage script runs as the README says (``python path/to/script.py``) and as a module, and
``--help`` documents every flag: a script whose own folder shadows its package, or an import that
only works from the repo root, fails here."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    p for folder in ("vlm_annotation", "vlm_training", "vlm_inference")
    for p in (ROOT / folder).glob("*.py")
    if "def main(" in p.read_text(encoding="utf-8") and "def parse_args(" in p.read_text(encoding="utf-8")
)


def _run(args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", YOLO_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_there_are_stage_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"data_annotation.py", "split_data.py", "convert_to_llava_format.py", "train_vlm.py",
            "predict.py", "evaluate.py", "vlm_inference.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_help_as_file_from_another_folder(script, tmp_path):
    res = _run([str(script), "--help"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_help_as_module(script):
    module = f"{script.parent.name}.{script.stem}"
    res = _run(["-m", module, "--help"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout
