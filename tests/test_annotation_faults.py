"""The annotation stage and the gallery under faults, round two (issue 28): real subprocesses, signals and
planted files.

Two shards given one output file, another images folder of the same file names, a model file replaced in
place, a hand-corrected output, hostile and oversized prompts, kept detector boxes across batch sizes, and the
gallery killed while it re-renders. Each case says what happened before the fix.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from tests.subprocesses import finish, wait_for
from vlm_annotation import data_annotation, engine, import_labels, visualize
from vlm_annotation.progress import progress_path
from vlm_core.schema import load_annotations

ROOT = Path(__file__).resolve().parents[1]
INJECT = str(ROOT / "tests" / "fault_inject.py")
NAMES = ["bus.jpg", "scenes/scene_0.jpg", "zidane.jpg"]


def start(script: str, argv: list[str], **faults) -> subprocess.Popen:
    """``python SCRIPT ARGV`` through the fault injector (tests/fault_inject.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **{k: str(v) for k, v in faults.items()})
    return subprocess.Popen([sys.executable, INJECT, script, *argv], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="backslashreplace", start_new_session=True)




@pytest.fixture(scope="module")
def folder(sample_images_dir, tmp_path_factory) -> Path:
    """Three of the sample photos: small enough for many runs."""
    out = tmp_path_factory.mktemp("three_images")
    for name in NAMES:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_images_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> dict:
    """Copies of the tiny detectors, so a test may replace one in place without touching the session's."""
    out = tmp_path_factory.mktemp("models")
    shutil.copy(tiny_models["yolo"], out / "yolo.pt")
    return {**tiny_models, "yolo": out / "yolo.pt"}


def argv_for(models, images_dir, output, *extra) -> list[str]:
    return ["--images_dir", str(images_dir), "--output_file", str(output),
            "--yolo_model", str(models["yolo"]), "--detr_model", str(models["rtdetr_model"]),
            "--detr_processor", str(models["rtdetr_processor"]), "--captioner_model", str(models["blip"]),
            "--max_det", "5", "--imgsz", "320", "--batch_size", "2", "--seed", "3", *extra]


def annotate(argv: list[str], monkeypatch) -> tuple[int, list[str]]:
    """Run the stage here; its exit code and the images it loaded (relative to --images_dir)."""
    loaded = []
    real = engine.load_image
    monkeypatch.setattr(engine, "load_image", lambda p, *a, **k: loaded.append(p) or real(p, *a, **k))
    code = data_annotation.main(argv)
    monkeypatch.undo()
    root = Path(argv[argv.index("--images_dir") + 1])
    return code, sorted(Path(p).relative_to(root).as_posix() for p in loaded)


def one_line(capsys) -> str:
    """The one line the stage printed about how it ended (progress bars and model loading left out)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(("error", "Traceback")) or "Error" in line]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------- shards sharing a file

def test_two_shards_given_one_output_are_refused(models, folder, tmp_path, monkeypatch, capsys):
    """Both printed "annotated N images" and the file held one shard (before); now the second refuses."""
    out = tmp_path / "annotations.json"
    shard = lambda k: argv_for(models, folder, out, "--num_shards", "2", "--shard_index", str(k))  # noqa: E731
    # At once: shard 0 is working (a real process, paused after its first image), shard 1 starts.
    first = start("vlm_annotation/data_annotation.py", shard(0), FAULT_PAUSE_AFTER_LINES=2,
                  FAULT_READY_FILE=tmp_path / "ready", FAULT_GO_FILE=tmp_path / "go")
    try:
        wait_for(tmp_path / "ready", first)
        assert annotate(shard(1), monkeypatch) == (2, [])
        line = one_line(capsys)
        assert "is being written by another run" in line and f"pid {first.pid}" in line
        assert "give each shard its own --output_file" in line
        (tmp_path / "go").touch()
        result = finish(first)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate()
    assert result.returncode == 0, result.stderr[-3000:]
    finished = out.read_bytes()
    assert load_annotations(out)["meta"]["shard"] == {"index": 0, "count": 2}
    # One after the other: the later shard never takes (or overwrites) the earlier one's file.
    assert annotate(shard(1), monkeypatch) == (2, [])
    line = one_line(capsys)
    assert "holds the annotations of shard 0 of 2" in line and "annotations.0.json, annotations.1.json" in line
    assert out.read_bytes() == finished
    assert annotate(shard(1) + ["--restart"], monkeypatch) == (2, [])  # --restart is no way around it
    assert "shards must not share an output" in one_line(capsys) and out.read_bytes() == finished
    # A killed shard's progress file names its shard: the other shard refuses it as well.
    out.unlink()
    progress_path(out, 0, 2).write_text(json.dumps({"header": {"shard": {"index": 0, "count": 2}}}) + "\n")
    assert annotate(shard(1), monkeypatch) == (2, [])
    assert "is being made by shard 0 of 2" in one_line(capsys) and not out.exists()


# ----------------------------------------------------------------------------- the same work?

def test_another_images_folder_or_a_replaced_model_is_not_the_same_work(models, folder, tmp_path, monkeypatch):
    """The other folder's finished output was reused, 3 of 3 records wrong (before); now annotated again."""
    out = tmp_path / "annotations.json"
    assert annotate(argv_for(models, folder, out), monkeypatch) == (0, NAMES)
    mirrored = tmp_path / "mirrored"
    for name in NAMES:  # the same names, other pictures (one of them turned: another width and height)
        (mirrored / name).parent.mkdir(parents=True, exist_ok=True)
        image = ImageOps.mirror(Image.open(folder / name))
        (image.transpose(Image.Transpose.ROTATE_90) if name == "bus.jpg" else image).save(mirrored / name)
    assert annotate(argv_for(models, mirrored, out), monkeypatch) == (0, NAMES)
    data = load_annotations(out)
    bus = next(r for r in data["images"] if r["image"] == "bus.jpg")
    assert (bus["width"], bus["height"]) == Image.open(mirrored / "bus.jpg").size
    assert data["meta"]["images_dir"] == str(mirrored.resolve())

    # The same command again: nothing to do. The YOLO file replaced in place (same path): all again.
    assert annotate(argv_for(models, mirrored, out), monkeypatch) == (0, [])
    stat = models["yolo"].stat()
    os.utime(models["yolo"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert annotate(argv_for(models, mirrored, out), monkeypatch) == (0, NAMES)


def test_import_labels_with_another_images_folder_describes_its_own_pictures(tiny_models, folder, tmp_path,
                                                                             monkeypatch):
    """import_labels reused the finished output of the other pictures (before)."""
    coco = {"categories": [{"id": 1, "name": "glass"}],
            "images": [{"id": k, "file_name": n, "width": Image.open(folder / n).width,
                        "height": Image.open(folder / n).height} for k, n in enumerate(NAMES)],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [10, 10, 50, 50]}]}
    labels = tmp_path / "coco.json"
    labels.write_text(json.dumps(coco))
    other = tmp_path / "other"
    for name in NAMES:
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        ImageOps.mirror(Image.open(folder / name)).save(other / name)
    out = tmp_path / "imported.json"
    runs = []
    for images_dir in (folder, other, other):
        loaded = []
        real = engine.load_image
        monkeypatch.setattr(engine, "load_image", lambda p, *a, **k: loaded.append(p) or real(p, *a, **k))
        assert import_labels.main(["--coco", str(labels), "--images_dir", str(images_dir), "--output_file",
                                   str(out), "--captioner_model", str(tiny_models["blip"]), "--batch_size", "2",
                                   "--caption_max_tokens", "6"]) == 0
        monkeypatch.undo()
        runs.append(len(loaded))
    assert runs == [3, 3, 0]  # the other folder: described again; then its finished output is reused
    assert load_annotations(out)["meta"]["images_dir"] == str(other.resolve())


# ----------------------------------------------------------------------------- a hand-corrected output

def test_a_hand_corrected_output_is_never_discarded(models, folder, tmp_path, monkeypatch, capsys):
    """Every correction was lost: all images annotated again over it (before); now refused in one line."""
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    held_back = tmp_path / "held_back.jpg"
    (images / NAMES[-1]).rename(held_back)
    out = tmp_path / "annotations.json"
    argv = argv_for(models, images, out)
    assert annotate(argv, monkeypatch) == (0, NAMES[:-1])

    # Saved again as json.dump(indent=2) writes it, nothing changed, one image added: only that one is done.
    json.dump(json.loads(out.read_text()), open(out, "w"), indent=2)
    held_back.rename(images / NAMES[-1])
    assert annotate(argv, monkeypatch) == (0, NAMES[-1:])
    capsys.readouterr()

    # A label corrected by hand, one image added: refused, the file untouched.
    data = json.loads(out.read_text())
    next(r for r in data["images"] if r["objects"])["objects"][0]["label"] = "fixed_by_hand"
    json.dump(data, open(out, "w"), indent=2)
    edited = out.read_bytes()
    (images / "added.jpg").write_bytes((images / NAMES[0]).read_bytes())
    assert annotate(argv, monkeypatch) == (2, [])
    line = one_line(capsys)
    assert f"--output_file: {out} was edited after the run that wrote it" in line and "--restart" in line
    assert out.read_bytes() == edited and sorted(p.name for p in tmp_path.iterdir()) == [
        "annotations.json", "images"]
    # A file this tool did not write is not replaced either; --restart replaces both.
    assert annotate(argv + ["--restart"], monkeypatch) == (0, sorted(NAMES + ["added.jpg"]))
    assert "fixed_by_hand" not in out.read_text()
    out.write_text('{"my": "notes"}')
    assert annotate(argv, monkeypatch) == (2, [])
    assert "is not an annotation file this tool wrote" in one_line(capsys)


# ----------------------------------------------------------------------------- prompts

@pytest.mark.parametrize("prompt, shown", [
    ("a photo of {label.__init__.__globals__} on", "{label.__init__.__globals__}"),
    ("a photo of {label.__class__.__mro__} on", "{label.__class__.__mro__}"),
    ("a photo of {0} on", "{0}"),
    ("a photo of {label!r} on", "{label!r}"),
])
def test_prompt_placeholders_other_than_the_documented_ones_are_refused(models, folder, tmp_path, capsys,
                                                                        prompt, shown):
    """{label.__class__.__mro__} was accepted and {label.__init__.__globals__} a traceback (before)."""
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"glass": "a photo of {article} {label} on", "can": prompt}))
    out = tmp_path / "a.json"
    assert data_annotation.main(argv_for(models, folder, out, "--prompts", str(prompts))) == 2
    line = one_line(capsys)
    assert f"{prompts}: can: placeholder {shown} is not allowed; use {{label}} or {{article}}" in line
    assert not out.exists()


def test_a_prompt_longer_than_the_captioners_context_is_one_line_at_load(models, folder, tmp_path, capsys):
    """IndexError in the middle of the run (before); now refused once the captioner is loaded, nothing written."""
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"__default__": "a photo of {article} {label} " + "lying on the grass " * 20}))
    out = tmp_path / "a.json"
    assert data_annotation.main(argv_for(models, folder, out, "--prompts", str(prompts))) == 2
    line = one_line(capsys)
    assert re.search(r"--prompts: __default__: the prompt is \d+ tokens; with --caption_max_tokens 20 it needs "
                     r"\d+ positions, more than the captioner's 64", line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.json"]


# ----------------------------------------------------------------------------- kept boxes

def test_kept_detector_boxes_do_not_depend_on_the_batch(models, folder, tmp_path):
    """Kept boxes differed at 1e-5 between batch sizes while the fused objects did not (before)."""
    files = []
    for batch in ("1", "3"):
        out = tmp_path / f"b{batch}.json"
        argv = argv_for(models, folder, out, "--keep_detector_boxes")
        argv[argv.index("--batch_size") + 1] = batch
        assert data_annotation.main(argv) == 0
        files.append(load_annotations(out))
    kept = [[r["detector_boxes"] for r in f["images"]] for f in files]
    assert kept[0] == kept[1] and any(boxes["yolo"] for boxes in kept[0])
    assert [r["objects"] for r in files[0]["images"]] == [r["objects"] for r in files[1]["images"]]
    for boxes in kept[0]:  # stored at the precision of the objects
        for d in boxes["yolo"] + boxes["rtdetr"]:
            assert d["bbox"] == [round(v, engine.BOX_DECIMALS) for v in d["bbox"]]
            assert d["score"] == round(d["score"], engine.SCORE_DECIMALS)


# ----------------------------------------------------------------------------- the gallery killed

def _gallery_links(out: Path) -> dict[str, str]:
    """Every page reachable from index.html (name -> text); every file they link must exist."""
    seen, todo = {}, ["index.html"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = (out / name).read_text(encoding="utf-8")
        for link in re.findall(r'(?:src|href)="([^"#]+)"', seen[name]):
            assert (out / link).is_file(), f"{name} links {link}, which is not there"
            if link.endswith(".html"):
                todo.append(link)
    return seen


def test_gallery_killed_while_re_rendering_stays_whole_and_the_rerun_cleans_up(tmp_path):
    """index.html of one render, page_2.html of another, and stale drawings and temp files forever (before)."""
    images = tmp_path / "imgs"
    images.mkdir()
    records = []
    for i in range(3):
        Image.new("RGB", (60, 40), (40 * i, 120, 80)).save(images / f"p{i}.jpg")
        records.append({"image": f"p{i}.jpg", "width": 60, "height": 40, "caption": "render one", "qa": [],
                        "objects": [{"id": 0, "label": "glass", "bbox": [5, 5, 30, 30], "score": 0.9,
                                     "sources": ["yolo"], "description": ""}]})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": records}))
    out = tmp_path / "review"
    argv = ["--annotation_file", str(ann), "--images_dir", str(images), "--output_dir", str(out), "--per_page", "1"]
    assert visualize.main(argv) == 0
    assert len(_gallery_links(out)) == 4  # index, two more pages, the list of pages

    for r in records:  # the second render: every record changed
        r["caption"], r["objects"][0]["label"] = "render two", "can"
    ann.write_text(json.dumps({"images": records}))
    # Killed while drawing: a drawing's temp file is left behind.
    killed = finish(start("vlm_annotation/visualize.py", argv, FAULT_KILL_ON_TEMP=r"\.00001_.*\.tmp"))
    assert killed.returncode == -signal.SIGKILL
    assert list((out / "images").glob(".00001_*.tmp"))
    # Killed after every page but index.html was written.
    proc = start("vlm_annotation/visualize.py", argv, FAULT_PAUSE_BEFORE_TEMP=r"\.index\.html\.\w{8}\.tmp",
                 FAULT_READY_FILE=tmp_path / "ready")
    wait_for(tmp_path / "ready", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    pages = _gallery_links(out)  # the first render, whole: every page it links is its own
    assert len(pages) == 4 and all("render two" not in t for t in pages.values())
    assert sum("render one" in t for t in pages.values()) == 3  # the three pages of entries

    assert visualize.main(argv) == 0
    pages = _gallery_links(out)
    assert len(pages) == 4 and all("render one" not in t for t in pages.values())
    assert sum("render two" in t for t in pages.values()) == 3
    used = {link for t in pages.values() for link in re.findall(r'(?:src|href)="([^"#]+)"', t)} | {"index.html"}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == used  # no drawing or page of another render, no temp file, no lock
