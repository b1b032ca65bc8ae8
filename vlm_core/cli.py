"""Command-line plumbing the stage scripts share: help that marks required flags, argparse errors in one line,
and a config file (JSON or YAML, keys = flag names) read as flags the command line may override::

    python vlm_training/train_vlm.py train.yaml --learning_rate 1e-4

Light on purpose (standard library; PyYAML only when a .yaml file is read): a script's ``--help`` imports this
before anything heavy.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
from pathlib import Path
from typing import Sequence

from vlm_core.io_utils import InputError

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
HELP_FLAGS = ("-h", "--help")
HELP_ALL_FLAG = "--help_all"
_ALL_SPELLINGS = re.compile(r"-[-\w]+(?:/-[-\w]+)+")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, each flag's default; a required flag says "(required)", not "(default: None)",
    and a flag without a default says nothing about one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)"


def raise_input_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` raise :class:`InputError` where argparse prints its usage and exits: a missing or bad flag
    is then one line and exit 2 (runtime.report_input_errors), not the usage of every flag first."""
    def error(message: str):
        # argparse names a flag by all its spellings ("--image_dir/--image-dir/--images_dir"): the first is enough
        raise InputError(f"{_ALL_SPELLINGS.sub(lambda m: m[0].split('/')[0], message)} (see --help)")

    parser.error = error
    return parser


def wants_help(argv: Sequence[str]) -> str | None:
    """``"brief"`` for -h/--help, ``"all"`` for --help_all, else None (only flags before a lone ``--`` count)."""
    args = list(argv)
    if "--" in args:
        args = args[:args.index("--")]
    if HELP_ALL_FLAG in args:
        return "all"
    return "brief" if any(a in HELP_FLAGS for a in args) else None


def split_config_file(argv: Sequence[str]) -> tuple[Path | None, list[str]]:
    """A leading ``config.yaml`` / ``config.json`` (as transformers' examples and LLaMA-Factory take one) and the
    flags after it; ``(None, argv)`` when the first argument is not such a file name."""
    args = list(argv)
    if args and not args[0].startswith("-") and Path(args[0]).suffix.lower() in CONFIG_SUFFIXES:
        return Path(args[0]), args[1:]
    return None, args


def read_config(path: Path) -> dict:
    """The file's mapping of flag names to values; a missing, unreadable or non-mapping file is an InputError."""
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except (ValueError, ImportError) as e:  # json.JSONDecodeError is a ValueError
        raise InputError(f"{path}: not valid {path.suffix[1:].upper()}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # yaml.YAMLError and its subclasses
        if type(e).__module__.startswith("yaml"):
            raise InputError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        raise
    if data is None:
        return {}
    if not isinstance(data, dict):
        hint = " (a LLaVA data file? give it as --train_data)" if isinstance(data, list) else ""
        raise InputError(f"{path}: a config file holds a mapping of flag names to values, got a "
                         f"{type(data).__name__}{hint}")
    return data


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: action for action in parser._actions for opt in action.option_strings}


def _as_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def config_to_argv(path: Path, parser: argparse.ArgumentParser) -> list[str]:
    """The config file as command-line flags, for ``parser`` to read before the command line's own (the later
    flag wins in argparse, so the command line overrides the file). A key is a flag name without its dashes
    (``learning_rate``, an alias such as ``batch_size`` too); ``null`` leaves the flag at its default; a list is
    the flag's values (``report_to: [tensorboard]``); a mapping goes in as JSON (``deepspeed: {...}``)."""
    options = _options(parser)
    argv: list[str] = []
    for key, value in read_config(path).items():
        flag = f"--{key}" if not str(key).startswith("-") else str(key)
        action = options.get(flag)
        if action is None or flag in HELP_FLAGS + (HELP_ALL_FLAG,):
            close = difflib.get_close_matches(flag, list(options), n=1)
            hint = f"; did you mean {close[0].lstrip('-')}?" if close else "; --help_all lists every flag"
            raise InputError(f"{path}: unknown key '{key}' (not a flag of this script{hint})")
        if value is None:
            continue
        if action.nargs == 0:  # store_true / store_false (--no_group_by_length): present or not
            if not isinstance(value, bool):
                raise InputError(f"{path}: key '{key}' takes true or false, got {value!r}")
            if value:
                argv.append(flag)
        elif isinstance(value, list) and action.nargs in ("+", "*"):
            if value or action.nargs == "*":
                argv += [flag, *(_as_text(v) for v in value)]
        elif isinstance(value, list):  # a flag of one value: a list of one is that value
            if len(value) != 1:
                raise InputError(f"{path}: key '{key}' takes one value, got a list of {len(value)}")
            argv += [flag, _as_text(value[0])]
        else:
            argv += [flag, _as_text(value)]
    return argv
