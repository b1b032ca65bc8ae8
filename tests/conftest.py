"""Shared fixtures: tiny real-architecture models and sample images, built once per test run.

Nothing here reaches the network: the environment is forced offline before any model
library is imported.

``make test`` runs the suite on two pytest-xdist workers (``-n 2 --dist loadgroup``). Then each
worker uses one torch thread, the workers share one build of the tiny models, the tests of a
module that share a module-scoped fixture run in one worker (the fixture is built once), and
the long tests are handed out first so that neither worker is left with them at the end.
"""
from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    # Two workers on two cores: two torch thread pools each as wide as the machine would fight over
    # the cores (a busy 2-core machine ran train_vlm.py 5x slower on two threads than on one). Set
    # before torch is imported; the stage scripts the tests start inherit it.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import fcntl  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from fixtures.tiny_models import build_all  # noqa: E402

# Tests (node id prefixes) that take the longest, started first under xdist: a long test handed
# out last keeps one worker busy while the other has nothing left to do. Only the order of the
# run depends on this list, never what runs.
LONG_FIRST = (
    "tests/test_world.py::test_reduced_world_run_learns",
    "tests/test_world.py::test_world_run_trains_every_model",
    "tests/test_world_training.py",
    "tests/test_world_vision.py",
    "tests/test_training_ddp.py",
    "tests/test_app.py",
    "tests/test_eval_generate.py",
    "tests/test_training_resume.py",
    "tests/test_training_faults.py",
    "tests/test_annotation_faults.py",
    "tests/test_detectors.py",
    "tests/test_predict.py",
    "tests/test_annotation_e2e.py",
    "tests/test_faults.py",
    "tests/test_import_labels.py",
    "tests/test_training.py",
)


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs[-1].scope in ("module", "class", "package")
               for defs in info.name2fixturedefs.values() if defs)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup``: one group per module for the tests that share a module-scoped
    fixture, every other test on its own (so the two workers stay evenly loaded), the long ones
    first. Runs before xdist reads the groups; whole modules move, so a module's fixtures are
    still set up once."""
    if not (WORKER and config.getvalue("loadgroup")):
        return
    for item in items:
        if not any(True for _ in item.iter_markers("xdist_group")) and _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))

    def rank(item: pytest.Item) -> int:
        return next((k for k, prefix in enumerate(LONG_FIRST) if item.nodeid.startswith(prefix)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: the order within a module is kept


def _built_once(folder: Path, build) -> dict[str, Path]:
    """``build(folder)`` unless an earlier worker of this run has built it; its ``tiny_models.json``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits here while the first one builds
        done = folder / "tiny_models.json"  # written last by build_all: the build is complete
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed half-way
            build(folder)
        return {name: Path(path) for name, path in json.loads(done.read_text()).items()}


def _run_temp(tmp_path_factory) -> Path:
    """This run's temp folder: under xdist, the one the workers' own folders are in."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if WORKER else base


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """Paths of the tiny models: yolo, rtdetr_model, rtdetr_processor, blip, llava and the other
    families. Built once per run, however many xdist workers use them."""
    return _built_once(_run_temp(tmp_path_factory) / "tiny_models", lambda out: build_all(out, seed=0))


@pytest.fixture(scope="session")
def sample_images_dir(tmp_path_factory):
    """A folder with bus.jpg, zidane.jpg and scenes/scene_*.{jpg,png}."""
    from fixtures.sample_images import write_sample_images
    out = tmp_path_factory.mktemp("sample_images")
    write_sample_images(out)
    return out
