"""The shape of the code base (docs/structure.md): vlm_core imports no stage, no module imports a script
(a file with a ``main()``) except the guide's API module, and no import cycle anywhere."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vlm_core", "vlm_annotation", "vlm_training", "vlm_inference", "world", "fixtures", "benchmarks")
# The guide's API module: `from vlm_inference.vlm_inference import VLMInference` is how users start.
API_SCRIPTS = {"vlm_inference.vlm_inference"}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p
            for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def _is_script(path: Path) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(path.read_text()).body)


MODULES = _modules()
GRAPH = {name: _imports(path, MODULES) - {name} for name, path in MODULES.items()}


def test_core_imports_no_stage():
    bad = {m: sorted(d for d in deps if not d.startswith("vlm_core"))
           for m, deps in GRAPH.items() if m.startswith("vlm_core")}
    assert not {m: d for m, d in bad.items() if d}


def test_no_module_imports_a_script():
    scripts = {m for m, p in MODULES.items() if _is_script(p)} - API_SCRIPTS
    bad = {m: sorted(deps & scripts) for m, deps in GRAPH.items() if not m.startswith("benchmarks")}
    assert not {m: d for m, d in bad.items() if d}


def test_stage_packages_import_no_other_stage_except_the_api():
    stages = ("vlm_annotation", "vlm_training", "vlm_inference")
    bad = {}
    for m, deps in GRAPH.items():
        pkg = m.split(".")[0]
        if pkg in stages:
            other = sorted(d for d in deps if d.split(".")[0] in stages and d.split(".")[0] != pkg)
            if other:
                bad[m] = other
    assert not bad


def test_no_import_cycles():
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(GRAPH[m]):
            d = d if d in GRAPH else d.rsplit(".", 1)[0]
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d in GRAPH and not state.get(d):
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(GRAPH):
        if not state.get(m):
            visit(m, [m])
    assert not cycles
