"""The command line (issue 27): a config file for train_vlm.py (JSON or YAML, keys = flag names, the command line
overriding it), a short ``--help`` and a full ``--help_all``, a missing flag in one line, and a console command
(pyproject [project.scripts]) for every stage script."""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from fixtures.toy_data import write_toy_llava_dataset
from vlm_core import cli
from vlm_core.io_utils import InputError
from vlm_training import train_help

ROOT = Path(__file__).resolve().parents[1]
# pyproject.toml's [project.scripts] (read by hand: tomllib is Python 3.11+, the toolkit runs on 3.10)
ENTRY_POINTS: dict[str, str] = dict(re.findall(r'^([\w-]+) = "([\w.]+:\w+)"$', (ROOT / "pyproject.toml").read_text()
                                               .split("[project.scripts]\n")[1].split("\n[")[0], re.M))
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _parser() -> argparse.ArgumentParser:
    """A small parser with the kinds of flag HfArgumentParser makes: a value, an alias, a bool that takes
    true/false, its --no_ complement, a list."""
    p = argparse.ArgumentParser(formatter_class=cli.HelpFormatter)
    p.add_argument("--output_dir", required=True, help="where it goes")
    p.add_argument("--per_device_train_batch_size", "--batch_size", type=int, default=4, help="batch")
    p.add_argument("--use_lora", type=lambda s: s == "true", nargs="?", const=True, default=False, help="lora")
    p.add_argument("--group_by_length", default=True, help="group")
    p.add_argument("--no_group_by_length", dest="group_by_length", action="store_false", help="no group")
    p.add_argument("--label_names", nargs="+", default=["labels"], help="labels")
    p.add_argument("--val_data", default=None, help="validation file")
    return p


# --------------------------------------------------------------------- vlm_core.cli, pure logic

def test_a_leading_json_or_yaml_file_is_the_config_and_anything_else_is_not():
    assert cli.split_config_file(["train.yaml", "--lr", "1"]) == (Path("train.yaml"), ["--lr", "1"])
    assert cli.split_config_file(["c.JSON"]) == (Path("c.JSON"), [])
    assert cli.split_config_file(["run.yml"]) == (Path("run.yml"), [])
    assert cli.split_config_file(["--train_data", "a.json"]) == (None, ["--train_data", "a.json"])
    assert cli.split_config_file(["notes.txt"]) == (None, ["notes.txt"])
    assert cli.split_config_file([]) == (None, [])


def test_config_keys_become_flags_in_the_file_order(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"output_dir": "out", "batch_size": 2, "use_lora": True, "no_group_by_length": True,
                                "label_names": ["a", "b"], "val_data": None}))
    assert cli.config_to_argv(path, _parser()) == ["--output_dir", "out", "--batch_size", "2", "--use_lora", "true",
                                                   "--no_group_by_length", "--label_names", "a", "b"]
    path.write_text(json.dumps({"use_lora": False, "no_group_by_length": False, "--output_dir": "o",
                                "val_data": ["v.json"]}))
    assert cli.config_to_argv(path, _parser()) == ["--use_lora", "false", "--output_dir", "o", "--val_data", "v.json"]


def test_the_command_line_overrides_the_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: from_file\nbatch_size: 2\nlabel_names: [x]\n")
    parser = _parser()
    args = parser.parse_args(cli.config_to_argv(path, parser) + ["--per_device_train_batch_size", "8"])
    assert (args.output_dir, args.per_device_train_batch_size, args.label_names) == ("from_file", 8, ["x"])


@pytest.mark.parametrize("text, message", [
    ("output_dir: o\nlearning_rat: 1\n", "unknown key 'learning_rat'"),
    ("output_dir: o\nhelp: true\n", "unknown key 'help'"),
    ("- image: a.jpg\n", "a mapping of flag names to values, got a list (a LLaVA data file? give it as "
                           "--train_data)"),
    ("output_dir: [unclosed\n", "not valid YAML"),
    ("no_group_by_length: maybe\n", "key 'no_group_by_length' takes true or false"),
    ("val_data: [a.json, b.json]\n", "key 'val_data' takes one value, got a list of 2"),
])
def test_a_bad_config_file_is_one_error_naming_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        cli.config_to_argv(path, _parser())
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_key_suggests_the_flag_meant(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"batch_sise": 2}')
    with pytest.raises(InputError, match="did you mean batch_size"):
        cli.config_to_argv(path, _parser())
    with pytest.raises(InputError, match="config file not found"):
        cli.config_to_argv(tmp_path / "none.json", _parser())


def test_help_marks_required_flags_and_hides_a_default_of_none():
    text = _parser().format_help()
    assert re.search(r"--output_dir OUTPUT_DIR\s+where it goes \(required\)", text)
    assert re.search(r"validation file\n", text) and "default: None" not in text
    assert "batch (default: 4)" in text


def test_wants_help():
    assert cli.wants_help(["--help"]) == cli.wants_help(["x.yaml", "-h"]) == "brief"
    assert cli.wants_help(["--help", "--help_all"]) == "all"
    assert cli.wants_help(["--lr", "1"]) is None and cli.wants_help(["--", "--help"]) is None


def test_a_missing_flag_is_one_line_naming_it_by_its_first_spelling():
    parser = cli.raise_input_errors(_parser())
    parser.add_argument("--image_dir", "--image-dir", "--images_dir", required=True, help="images")
    with pytest.raises(InputError) as e:
        parser.parse_args([])
    assert str(e.value) == "the following arguments are required: --output_dir, --image_dir (see --help)"


# --------------------------------------------------------------------- train_vlm.py

@pytest.fixture(scope="module")
def train_vlm():
    from vlm_training import train_vlm
    return train_vlm


@pytest.fixture
def toy(tmp_path, tiny_models):
    data, images, _ = write_toy_llava_dataset(tmp_path)
    return {"train_data": str(data), "image_dir": str(images), "output_dir": str(tmp_path / "m"),
            "base_model": str(tiny_models["llava"])}


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_train_vlm_reads_a_config_file_and_the_command_line_overrides_it(train_vlm, toy, tmp_path, suffix):
    config = toy | {"use_lora": True, "lora_r": 8, "batch_size": 2, "learning_rate": "1e-3", "seed": 7,
                    "report_to": "none", "no_group_by_length": True, "label_names": ["labels"]}
    path = tmp_path / f"train{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(config))
    else:  # written by hand, as a user would (1e-3 unquoted is a string to YAML 1.1: the flag's type reads it)
        path.write_text("".join(f"{k}: {json.dumps(v) if isinstance(v, list) else v}\n".replace("True", "true")
                                for k, v in config.items()))
    model, data, train = train_vlm.parse_args([str(path), "--lora_r", "16", "--num_epochs", "2"])
    assert model.use_lora is True and model.lora_r == 16 and model.base_model == toy["base_model"]
    assert data.train_data == toy["train_data"] and data.image_dir == toy["image_dir"]
    assert train.per_device_train_batch_size == 2 and train.learning_rate == 1e-3 and train.seed == 7
    assert train.num_train_epochs == 2 and train.group_by_length is False and train.output_dir == toy["output_dir"]


def test_train_vlm_refuses_an_unknown_config_key_in_one_line(train_vlm, toy, tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in (toy | {"learning_rat": 0.1}).items()))
    assert train_vlm.main([str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {path}: unknown key 'learning_rat' (not a flag of this script; did you mean "
                   "learning_rate?)"]


def test_train_vlm_missing_flag_is_one_line(train_vlm, tmp_path, capsys):
    assert train_vlm.main(["--output_dir", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: the following arguments are required: --train_data, --image_dir (see --help)"]
    assert train_vlm.main(["--output_dir", str(tmp_path / "m"), "--train_data", "t.json", "--image_dir", ".",
                           "--lora_rank", "8"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: unrecognized arguments: --lora_rank 8 (see --help_all)"]


def test_train_vlm_help_is_short_and_help_all_lists_every_flag(train_vlm, capsys):
    with pytest.raises(SystemExit) as e:
        train_vlm.main(["--help"])
    assert e.value.code == 0
    brief = capsys.readouterr().out
    assert brief == train_help.BRIEF_HELP and len(brief.splitlines()) < 100
    assert max(len(line) for line in brief.splitlines()) <= 100
    with pytest.raises(SystemExit) as e:
        train_vlm.parse_args(["--output_dir", "x", "--help_all"])
    assert e.value.code == 0
    full = capsys.readouterr().out
    assert len(full.splitlines()) > 300 and "--lr_scheduler_type" in full and "--adam_beta1" in full
    assert "default: None" not in full
    assert re.search(r"--train_data TRAIN_DATA, --train-data TRAIN_DATA\n\s+training file.*\n?.*\(required\)",
                     full)


def _brief_entries() -> dict[str, str]:
    """Each flag the short help lists (its first spelling) and the rest of its entry."""
    entries, current = {}, None
    for line in train_help.BRIEF_HELP.splitlines():
        m = re.match(r"^  (-[^\s,]+)(?:, (--\S+))?(.*)$", line)
        if m:
            current = m[2] or m[1]
            entries[current] = m[3]
        elif current and line.startswith(" " * 28):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_every_flag_of_the_short_help_exists_with_the_default_it_states(train_vlm):
    parser = train_vlm.build_parser()
    actions = {opt: a for a in parser._actions for opt in a.option_strings}
    entries = _brief_entries()
    assert len(entries) > 45
    for flag, text in entries.items():
        assert flag in actions, f"{flag}: not a flag of train_vlm.py"
        action = actions[flag]
        stated = re.search(r"\(default: (\S+)\)$", text)
        if stated and not stated[1].startswith("--"):  # "(default: --learning_rate)" describes, not states
            assert stated[1] == str(action.default), f"{flag}: the help says {stated[1]}, it is {action.default}"
        if action.choices and "{" in text:
            assert re.search(r"\{([^}]*)\}", text)[1].split(",") == list(action.choices), flag
    required = {a.option_strings[0] for a in parser._actions if a.required}
    required_block = train_help.BRIEF_HELP.split("required:\n")[1].split("\n\n")[0]
    assert set(re.findall(r"^  (--\w+)", required_block, re.M)) == required == {"--train_data", "--image_dir",
                                                                                "--output_dir"}


def test_every_flag_of_the_toolkit_is_in_the_short_help_or_named_as_plumbing(train_vlm):
    import dataclasses

    own = [f.name for cls in (train_vlm.ModelArguments, train_vlm.DataArguments) for f in dataclasses.fields(cls)]
    own += list(train_vlm.VLMTrainingArguments.__annotations__)
    shown = {flag.lstrip("-").removeprefix("no_") for flag in _brief_entries()}
    missing = [name for name in own if name not in shown and name not in train_help.PLUMBING]
    assert not missing, f"add to train_help.BRIEF_HELP (or PLUMBING): {missing}"


def test_the_short_help_loads_neither_torch_nor_transformers():
    probe = ("import atexit, runpy, sys; sys.argv = ['train_vlm.py', '--help']; "
             "atexit.register(lambda: print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), "
             "file=sys.stderr)); runpy.run_path('vlm_training/train_vlm.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == train_help.BRIEF_HELP
    assert proc.stderr.strip() == "[]"


# --------------------------------------------------------------------- console commands

def _stage_scripts() -> set[str]:
    """Every stage script: a vlm_*/ module that runs main() when run as a script."""
    return {str(p.relative_to(ROOT)) for p in ROOT.glob("vlm_*/*.py")
            if re.search(r"^def main\(argv=None\)", p.read_text(), re.M) and "__main__" in p.read_text()}


def test_every_stage_script_has_a_console_command_running_its_main():
    targets = {}
    for name, target in ENTRY_POINTS.items():
        assert re.fullmatch(r"vlm-[a-z]+(-[a-z]+)*", name), name
        module, func = target.split(":")
        assert func == "main", target
        path = Path(importlib.util.find_spec(module).origin).resolve()
        tree = ast.parse(path.read_text())
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        assert mains and [a.arg for a in mains[0].args.args] == ["argv"], f"{target}: no main(argv=None)"
        targets[str(path.relative_to(ROOT))] = name
    assert set(targets) == _stage_scripts(), "a stage script without a console command, or one too many"
    for name in ("vlm-annotate", "vlm-split", "vlm-convert", "vlm-train", "vlm-infer", "vlm-predict",
                 "vlm-evaluate"):
        assert name in ENTRY_POINTS


def test_the_installed_commands_are_the_pyproject_ones_and_run():
    installed = {ep.name: ep.value for ep in metadata.distribution("vlm-region-toolkit").entry_points
                 if ep.group == "console_scripts"}
    assert installed == ENTRY_POINTS, "re-install: pip install --no-deps --no-build-isolation -e ."
    command = Path(sys.executable).parent / "vlm-split"
    proc = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=120,
                          env={"PATH": str(command.parent), **ENV})
    assert proc.returncode == 0 and proc.stdout.startswith("usage: vlm-split ") and "--input_file" in proc.stdout


def test_vlm_train_help_is_the_short_one_without_torch():
    command = Path(sys.executable).parent / "vlm-train"
    proc = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=300,
                          env={"PATH": str(command.parent), "PYTHONPROFILEIMPORTTIME": "1", **ENV})
    assert proc.returncode == 0 and proc.stdout == train_help.BRIEF_HELP
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "vlm_training.train_help" in imported and not imported & {"torch", "transformers"}


def test_a_reader_closing_the_pipe_early_stops_nothing(tmp_path):
    """`convert ... | head -1`: the reader is gone before the stage prints its summaries; every output file is still
    written, with no BrokenPipeError traceback and exit 0 (before, the second file was lost to a traceback)."""
    import os
    record = {"image": "a.jpg", "width": 10, "height": 10, "caption": "", "objects": [],
              "qa": [{"question": "How many objects are there?", "answer": "There are 0 objects in this image.",
                      "type": "count", "object_ids": []}]}
    inputs = []
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"images": [record], "skipped": [], "meta": {}}))
        inputs.append(str(tmp_path / f"{name}.json"))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone: every write into the pipe fails
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "vlm_training" / "convert_to_llava_format.py"),
                               "--annotation_file", *inputs, "--output_file", str(tmp_path / "a_llava.json"),
                               str(tmp_path / "b_llava.json")], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    for name in ("a", "b"):
        assert len(json.loads((tmp_path / f"{name}_llava.json").read_text())) == 1
