"""The docs tell the truth about the commands: every project script that README.md, docs/*.md and the folder
READMEs run in a fenced code block (or an inline code span) exists, and every ``--flag`` given to it is one that the script's own
``--help`` lists; every ``make <target>`` is a target of the Makefile; every relative link points to a file;
README.md stays one page (at most 250 lines)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "data" / "README.md", ROOT / "models" / "README.md", ROOT / "fixtures" / "README.md"]
README_MAX_LINES = 250
# What runs a script: the interpreter (any spelling of its path), or a launcher that takes one.
RUNNER = re.compile(r"^(?:\S*/)?(?:python(?:\d+(?:\.\d+)?)?|torchrun|accelerate)$")
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`]+)`")  # a span may wrap onto the next line
# The console commands (pyproject.toml's [project.scripts]: vlm-train = "vlm_training.train_vlm:main"), each
# checked as the script it runs.
CONSOLE_COMMANDS = {name: module.replace(".", "/") + ".py" for name, module in re.findall(
    r'^([\w-]+) = "([\w.]+):\w+"$', (ROOT / "pyproject.toml").read_text().split("[project.scripts]\n")[-1]
    .split("\n[")[0], re.M)}
# argparse prints each option's invocation ("  -h, --help", "  --lora_r LORA_R, --lora-r LORA_R") on a line
# indented by two spaces, then its help after a gap of two or more spaces; wrapped help lines are indented
# further, so flags that the help text merely mentions are not taken for accepted ones.
OPTION_LINE = re.compile(r"^  (-\S.*)$")


def code_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks of a Markdown text."""
    blocks, current = [], None
    for line in text.splitlines():
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    kept, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


def _tokens(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote (a Python line in a code block): plain words will do
        return line.split("#")[0].split()


def commands(text: str) -> list[tuple[str, list[str]]]:
    """Every project script run in the fenced code blocks and inline code spans of ``text``, as (script, its
    arguments): ``script`` is a path (``python path/to/script.py ...``, also after ``torchrun ...`` or
    ``accelerate launch``) or ``-m package.module``; lines ending in a backslash continue the command."""
    found = []
    spans = [" ".join(span.split()) for span in INLINE_CODE.findall(prose(text))]
    for block in code_blocks(text) + spans:
        for line in re.sub(r"\\\n", " ", block).splitlines():
            for part in re.split(r"&&|\|\||;|\|", line):
                tokens = _tokens(part)
                starts = [i for i, t in enumerate(tokens) if RUNNER.match(t)]
                console = [i for i, t in enumerate(tokens) if t.rsplit("/", 1)[-1] in CONSOLE_COMMANDS]
                if console and (not starts or console[0] < starts[0]):
                    found.append((CONSOLE_COMMANDS[tokens[console[0]].rsplit("/", 1)[-1]], tokens[console[0] + 1:]))
                    continue
                if not starts:
                    continue
                rest = tokens[starts[0] + 1:]
                for i, tok in enumerate(rest):
                    if tok == "-m" and i + 1 < len(rest):
                        found.append((f"-m {rest[i + 1]}", rest[i + 2:]))
                        break
                    if tok.endswith(".py"):
                        found.append((tok, rest[i + 1:]))
                        break
                    if tok in ("-", "-c"):  # a script read from stdin or given inline: no file to check
                        break
    return found


def flags(args: list[str]) -> list[str]:
    """The ``--flag`` names among a command's arguments (``[--opt x]`` in a usage line counts)."""
    names = []
    for arg in args:
        arg = arg.strip("[]()")
        if arg.startswith("--") and len(arg) > 2:
            names.append(arg.split("=", 1)[0])
    return names


def accepted_flags(help_text: str) -> set[str]:
    """The option strings an argparse ``--help`` output declares."""
    accepted = {"--help"}
    for line in help_text.splitlines():
        m = OPTION_LINE.match(line)
        if m:
            invocation = re.split(r"\s{2,}", m.group(1).strip())[0]
            accepted |= set(re.findall(r"--[A-Za-z0-9][\w-]*", invocation))
    return accepted


def script_path(script: str) -> Path:
    """The file a command runs: a path relative to the repository root, or a module's file."""
    if script.startswith("-m "):
        return ROOT.joinpath(*script[3:].split(".")).with_suffix(".py")
    return ROOT / script


def problems(cmds: list[tuple[str, list[str]]], help_flags: dict[str, set[str]]) -> list[str]:
    """What is wrong with the commands, given each script's accepted flags (``help_flags``)."""
    found = []
    for script, args in cmds:
        if not script_path(script).is_file():
            found.append(f"{script}: no such script")
            continue
        unknown = [f for f in flags(args) if f not in help_flags[script]]
        if unknown:
            found.append(f"{script}: {', '.join(unknown)} not in its --help")
    return found


def run_help(script: str) -> str:
    argv = ["-m", script[3:]] if script.startswith("-m ") else [script]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", YOLO_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    full_help = "--help_all" if script.endswith("train_vlm.py") else "--help"  # its --help is the short one
    proc = subprocess.run([sys.executable, *argv, full_help], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{script} --help failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    return proc.stdout


def doc_commands() -> dict[Path, list[tuple[str, list[str]]]]:
    return {doc: commands(doc.read_text()) for doc in DOCS if doc.is_file()}


@pytest.fixture(scope="module")
def help_flags() -> dict[str, set[str]]:
    """Each documented script's accepted flags, from one ``--help`` run per script, the runs side by side
    (train_vlm.py alone imports transformers' TrainingArguments for ~15 s)."""
    scripts = sorted({s for cmds in doc_commands().values() for s, _ in cmds if script_path(s).is_file()}
                     | {"vlm_training/split_data.py"})
    with ThreadPoolExecutor(max_workers=4) as pool:
        return {s: accepted_flags(text) for s, text in zip(scripts, pool.map(run_help, scripts))}


def test_the_docs_exist_and_readme_is_one_page():
    missing = [str(d.relative_to(ROOT)) for d in DOCS if not d.is_file()]
    assert not missing
    assert len(DOCS) > 5, "docs/ holds the manual"
    readme = (ROOT / "README.md").read_text()
    lines = len(readme.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}"
    # world/report.py --readme rewrites what lies between these markers and wants each once, on its own line.
    for marker in ("<!-- world-results:begin -->", "<!-- world-results:end -->"):
        assert readme.splitlines().count(marker) == 1 and readme.count(marker) == 1, marker


def test_every_documented_command_runs_a_script_with_flags_it_accepts(help_flags):
    cmds = doc_commands()
    assert sum(len(c) for c in cmds.values()) >= 20, "the extractor found the docs' commands"
    bad = [f"{doc.relative_to(ROOT)}: {p}" for doc, c in cmds.items() for p in problems(c, help_flags)]
    assert not bad, "\n".join(bad)


def test_the_checker_catches_a_bogus_flag_and_a_missing_script(help_flags):
    text = ("Split:\n\n```\n"
            "python vlm_training/split_data.py --input_file a.json \\\n"
            "    --train_file t.json --bogus_flag 1  # a comment --not_a_flag\n"
            "torchrun --standalone --nproc_per_node 2 vlm_training/split_data.py --input_file=a.json\n"
            ".venv/bin/python -m vlm_training.split_data [--seed 1] && python no/such_script.py --x\n"
            "pip install --upgrade nothing\n"
            "```\n\nInline, `python vlm_training/split_data.py --inline_bogus` is checked too; --not_code is not.\n")
    cmds = commands(text)
    assert [s for s, _ in cmds] == ["vlm_training/split_data.py", "vlm_training/split_data.py",
                                    "-m vlm_training.split_data", "no/such_script.py", "vlm_training/split_data.py"]
    assert flags(cmds[0][1]) == ["--input_file", "--train_file", "--bogus_flag"]
    assert flags(cmds[1][1]) == ["--input_file"]
    assert flags(cmds[2][1]) == ["--seed"]
    flags_of = dict(help_flags, **{"-m vlm_training.split_data": help_flags["vlm_training/split_data.py"]})
    assert problems(cmds, flags_of) == ["vlm_training/split_data.py: --bogus_flag not in its --help",
                                        "no/such_script.py: no such script",
                                        "vlm_training/split_data.py: --inline_bogus not in its --help"]


def test_accepted_flags_are_the_declared_options_only():
    help_text = ("usage: x.py [-h] [--a A]\n\noptions:\n  -h, --help            show this help message and exit\n"
                 "  --a A, --a-alias A    the a flag; see also\n                        --mentioned_only\n"
                 "  --very_long_option_name VERY_LONG_OPTION_NAME\n                        help on the next line\n")
    assert accepted_flags(help_text) == {"--help", "--a", "--a-alias", "--very_long_option_name"}


def make_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z][\w.-]*)\s*:(?!=)", line)
        if m:
            targets.add(m.group(1))
    return targets


def named_make_targets(text: str) -> list[str]:
    """The targets of every ``make ...`` in the code blocks and inline code spans of ``text``."""
    snippets = [line for block in code_blocks(text) for line in block.splitlines()]
    snippets += [" ".join(span.split()) for span in INLINE_CODE.findall(prose(text))]
    named = []
    for snippet in snippets:
        tokens = _tokens(snippet)
        for i, tok in enumerate(tokens):
            if tok == "make":
                for arg in tokens[i + 1:]:
                    if arg.startswith("-") or "=" in arg:
                        continue
                    named.append(arg)
    return named


def test_every_named_make_target_exists():
    assert sorted(named_make_targets("run `make demo` or\n```\nWORLD_MINUTES=60 make world X=1 bench\n```\n")) == \
        ["bench", "demo", "world"]
    targets = make_targets()
    assert {"test", "demo", "world"} <= targets
    bad = [f"{doc.relative_to(ROOT)}: make {t}" for doc in DOCS if doc.is_file()
           for t in named_make_targets(doc.read_text()) if t not in targets]
    assert not bad, "\n".join(bad)


PROJECT_PATH = re.compile(r"^(?:vlm_core|vlm_annotation|vlm_training|vlm_inference|world|fixtures|benchmarks|scripts|tests"
                          r"|docs)/[\w./-]*$")


def test_every_project_path_named_in_inline_code_exists():
    """`vlm_core/schema.py`, `world/models/`: a file or folder of this repository that the docs name exists."""
    bad = []
    for doc in DOCS:
        if doc.is_file():
            for span in INLINE_CODE.findall(prose(doc.read_text())):
                if PROJECT_PATH.match(span) and not (ROOT / span).exists():
                    bad.append(f"{doc.relative_to(ROOT)}: `{span}`")
    assert not bad, "\n".join(bad)


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (lower case, punctuation dropped, spaces to
    hyphens)."""
    return {re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#+\s+(.+)$", prose(markdown), re.M)}


def test_every_relative_link_points_to_a_file_and_heading():
    assert anchors("# A title\n\n## 1b. Labels, and more (`x`)\n") == {"a-title", "1b-labels-and-more-x"}
    bad = []
    for doc in DOCS:
        if not doc.is_file():
            continue
        for target in LINK.findall(prose(doc.read_text())):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                bad.append(f"{doc.relative_to(ROOT)}: ({target}): no such file")
            elif anchor and (path.suffix != ".md" or anchor not in anchors(path.read_text())):
                bad.append(f"{doc.relative_to(ROOT)}: ({target}): no such heading")
    assert not bad, "\n".join(bad)
