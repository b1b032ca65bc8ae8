"""The annotation stage under faults, on real subprocesses and the tiny models (issue 16).

Two runs of one command at once, a second run while / after the first, kill -9 (during the
work and during the final write), SIGTERM, a full disk (injected ENOSPC, and a real tiny tmpfs
where this machine lets us mount one), a file name that is not UTF-8. Each ends with the
output byte-identical to an uninterrupted run and nothing left behind. The faults are placed
at known moments by tests/fault_inject.py instead of racing the clock.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.subprocesses import finish, wait_for
from vlm_annotation.progress import ProgressLog, progress_path
from vlm_core.io_utils import InputError
from vlm_core.runtime import OutputBusy, remove_stale_temps, single_writer
from vlm_core.schema import load_annotations

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "vlm_annotation/data_annotation.py"
INJECT = str(ROOT / "tests" / "fault_inject.py")
INTERRUPTED = "finished work is saved; run the same command again to resume"
HOST = os.uname().nodename


def _env(**faults) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update({k: str(v) for k, v in faults.items()})
    return env


def annotate_argv(tiny_models, images_dir, output) -> list[str]:
    return ["--images_dir", str(images_dir), "--output_file", str(output),
            "--yolo_model", str(tiny_models["yolo"]), "--detr_model", str(tiny_models["rtdetr_model"]),
            "--detr_processor", str(tiny_models["rtdetr_processor"]), "--captioner_model", str(tiny_models["blip"]),
            "--max_det", "5", "--imgsz", "320", "--batch_size", "2", "--seed", "3"]


def start(argv: list[str], script: str = SCRIPT, **faults) -> subprocess.Popen:
    """``python SCRIPT ARGV`` (the annotation stage by default), through the fault injector when a
    fault is given."""
    cmd = [sys.executable, *([INJECT] if faults else []), script, *argv]
    return subprocess.Popen(cmd, env=_env(**faults), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="backslashreplace", start_new_session=True)



def run(argv: list[str], **faults) -> subprocess.CompletedProcess:
    return finish(start(argv, **faults))



def message_lines(stderr: str) -> list[str]:
    """The lines a stage printed about how it ended (progress bars and library chatter left out)."""
    keys = ("error", "terminated", "interrupted", "Traceback", "Error:")
    return [line for line in stderr.splitlines() if line.startswith(keys) or "Traceback" in line]


def done_images(progress: Path) -> list[str]:
    """The images of the complete lines of a progress file."""
    lines = progress.read_bytes().split(b"\n")[:-1]
    return [rec["image"] for rec in map(json.loads, lines) if "image" in rec]


def leftovers(folder: Path, keep: str = "annotations.json") -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


@pytest.fixture(scope="module")
def images_dir(sample_images_dir) -> Path:
    return sample_images_dir


@pytest.fixture(scope="module")
def all_images(images_dir) -> list[str]:
    from vlm_core.images import list_images
    return list_images(images_dir)


@pytest.fixture(scope="module")
def reference(tiny_models, images_dir, tmp_path_factory) -> bytes:
    """The annotation file of one uninterrupted run."""
    from vlm_annotation import data_annotation
    out = tmp_path_factory.mktemp("fault_reference") / "annotations.json"
    assert data_annotation.main(annotate_argv(tiny_models, images_dir, out)) == 0
    assert load_annotations(out)["images"]
    return out.read_bytes()


def annotate_here(argv: list[str]) -> tuple[int, list[str]]:
    """Run the stage in this process (a rerun after the fault: cheaper than a new interpreter);
    return its exit code and the images it loaded, relative to --images_dir."""
    from vlm_annotation import data_annotation, engine
    loaded = []
    real_load = engine.load_image
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "load_image", lambda p, *a, **k: loaded.append(p) or real_load(p, *a, **k))
        code = data_annotation.main(argv)
    root = Path(argv[argv.index("--images_dir") + 1])
    return code, sorted(Path(p).relative_to(root).as_posix() for p in loaded)


def test_two_runs_started_together(tiny_models, images_dir, reference, tmp_path):
    """Both die and the progress file gets two headers (before); now one runs, the other refuses."""
    out = tmp_path / "annotations.json"
    argv = annotate_argv(tiny_models, images_dir, out)
    procs = [start(argv), start(argv)]
    results = [finish(p) for p in procs]
    codes = sorted(r.returncode for r in results)
    # (0, 0) only when one ended before the other began: then the second found its finished output.
    assert codes in ([0, 0], [0, 2]), [r.stderr[-2000:] for r in results]
    for k, r in enumerate(results):
        if r.returncode == 2:
            (line,) = r.stderr.strip().splitlines()
            assert "is being written by another run" in line and f"(pid {procs[1 - k].pid} on {HOST}: " in line, line
    assert out.read_bytes() == reference
    assert leftovers(tmp_path) == []


def test_second_run_refused_then_kill9_then_reruns_lose_nothing(tiny_models, images_dir, all_images, reference,
                                                                tmp_path, capsys):
    out_dir = tmp_path / "out"
    out = out_dir / "annotations.json"
    argv = annotate_argv(tiny_models, images_dir, out)
    first = start(argv, FAULT_PAUSE_AFTER_LINES=3, FAULT_READY_FILE=tmp_path / "ready")  # header + 2 images
    try:
        wait_for(tmp_path / "ready", first)
        progress = progress_path(out)
        before = progress.read_bytes()

        capsys.readouterr()
        assert annotate_here(argv) == (2, [])  # the same command while the first is working
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"--output_file: {out} is being written by another run (pid {first.pid} on {HOST}: " in line
        assert progress.read_bytes() == before  # the refused run touched nothing
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    done = done_images(progress)
    assert len(done) == 2 and not out.exists()
    assert (out_dir / f"{progress.name}.lock").exists()  # the dead run's lock file, which must not block

    assert annotate_here(argv) == (0, sorted(set(all_images) - set(done)))  # nothing redone
    assert out.read_bytes() == reference
    assert leftovers(out_dir) == []  # no progress file, no lock file, no temp file

    # Started again after it finished (the run that lost 23 of 30 images before): same file, no work.
    assert annotate_here(argv) == (0, [])
    assert out.read_bytes() == reference
    assert leftovers(out_dir) == []


# SIGTERM is what SLURM and Kubernetes send on preemption; SIGHUP what a closed terminal or ssh session sends
# (it killed the run with nothing said before: issue 28). Exit 128 + the signal, as a shell reports it.
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_is_one_line_exit_143_and_resumes_byte_identical(tiny_models, images_dir, all_images, reference,
                                                                 tmp_path, signum):
    out_dir = tmp_path / "out"
    out = out_dir / "annotations.json"
    argv = annotate_argv(tiny_models, images_dir, out)
    proc = start(argv, FAULT_PAUSE_AFTER_LINES=4, FAULT_READY_FILE=tmp_path / "ready")
    wait_for(tmp_path / "ready", proc)
    os.kill(proc.pid, signum)
    result = finish(proc)
    name = signal.Signals(signum).name
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    assert message_lines(result.stderr) == [f"terminated ({name}): {INTERRUPTED}"]
    assert result.stderr.splitlines()[-1] == f"terminated ({name}): {INTERRUPTED}"
    done = done_images(progress_path(out))
    assert len(done) == 3 and not out.exists()
    assert leftovers(out_dir) == [progress_path(out).name]  # the lock file went with the run

    assert annotate_here(argv) == (0, sorted(set(all_images) - set(done)))
    assert out.read_bytes() == reference
    assert leftovers(out_dir) == []


def test_gallery_sigterm_is_one_line_exit_143_and_keeps_what_it_drew(images_dir, reference, tmp_path):
    from vlm_annotation import visualize
    annotations = tmp_path / "annotations.json"
    annotations.write_bytes(reference)
    review = tmp_path / "review"
    argv = ["--annotation_file", str(annotations), "--images_dir", str(images_dir), "--output_dir", str(review)]
    proc = start(argv, "vlm_annotation/visualize.py", FAULT_PAUSE_BEFORE_TEMP=r"\.index\.html\.\w{8}\.tmp",
                 FAULT_READY_FILE=tmp_path / "ready")  # every image drawn, the first page not yet written
    wait_for(tmp_path / "ready", proc)
    os.kill(proc.pid, signal.SIGTERM)
    result = finish(proc)
    assert result.returncode == 143, result.stderr[-3000:]
    assert message_lines(result.stderr) == [f"terminated (SIGTERM): {INTERRUPTED}"]
    assert len(list((review / "images").iterdir())) == len(json.loads(reference)["images"])
    assert not (review / "index.html").exists() and not list(review.rglob("*.tmp"))
    assert visualize.main(argv) == 0
    assert (review / "index.html").exists()


def test_kill9_during_the_final_write_leaves_a_temp_file_the_rerun_removes(tiny_models, images_dir, reference,
                                                                          tmp_path):
    out = tmp_path / "annotations.json"
    argv = annotate_argv(tiny_models, images_dir, out)
    killed = run(argv, FAULT_KILL_ON_TEMP=r"\.annotations\.json\.\w{8}\.tmp")
    assert killed.returncode == -signal.SIGKILL
    (temp,) = tmp_path.glob(".annotations.json.*.tmp")
    assert temp.stat().st_size == 0 and not out.exists()
    assert progress_path(out).exists()

    assert annotate_here(argv) == (0, [])  # all the work was done: only the write is redone
    assert out.read_bytes() == reference
    assert leftovers(tmp_path) == []  # the dead run's temp file is gone


def test_undecodable_file_name_is_skipped_with_its_escaped_name(tiny_models, images_dir, reference, tmp_path):
    """UnicodeEncodeError on every rerun (before); now listed under skipped, printable, and said."""
    folder = tmp_path / "images"
    shutil.copytree(images_dir, folder)
    shutil.copyfile(folder / "bus.jpg", folder / os.fsdecode(b"bad\xff name.jpg"))
    out = tmp_path / "annotations.json"
    argv = annotate_argv(tiny_models, folder, out)
    result = run(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 skipped" in result.stdout
    data = load_annotations(out)
    (skipped,) = data["skipped"]
    assert skipped["image"] == "bad\\xff name.jpg"
    assert skipped["reason"] == "file name is not valid UTF-8 (bad\\xff name.jpg); rename the file"
    assert data["images"] == json.loads(reference)["images"]
    first = out.read_bytes()
    first.decode("utf-8")  # strict UTF-8 throughout

    # Every rerun crashed before. Now it finds the finished output; the skipped file is tried again.
    assert annotate_here(argv) == (0, [os.fsdecode(b"bad\xff name.jpg")])
    assert out.read_bytes() == first
    assert leftovers(tmp_path) == ["images"]


def test_full_disk_is_one_line_and_never_a_truncated_file(tiny_models, images_dir, reference, tmp_path):
    out = tmp_path / "annotations.json"
    argv = annotate_argv(tiny_models, images_dir, out)
    progress = progress_path(out)

    # The disk fills up in the middle of a record of the progress file (a third of the way through) ...
    first = run(argv, FAULT_ENOSPC_MATCH=r"annotations\.json\.progress\.jsonl", FAULT_ENOSPC_AFTER=len(reference) // 3)
    assert first.returncode == 1, first.stderr[-3000:]
    assert message_lines(first.stderr) == [f"error: disk full: {progress} (No space left on device); "
                                           "free space and run the same command again"]
    assert 1 <= len(done_images(progress)) < 6 and not out.exists()
    assert not progress.read_bytes().endswith(b"\n")  # a partial last line: dropped and redone on resume

    # ... and half-way through the final write.
    second = run(argv, FAULT_ENOSPC_MATCH=r"\.annotations\.json\.\w{8}\.tmp", FAULT_ENOSPC_AFTER=len(reference) // 2)
    assert second.returncode == 1, second.stderr[-3000:]
    (line,) = message_lines(second.stderr)
    assert line.startswith(f"error: disk full: {tmp_path}/.annotations.json.") and "No space left" in line
    assert not out.exists()
    assert leftovers(tmp_path) == [progress.name]  # no temp file, and the finished work is kept

    assert annotate_here(argv) == (0, [])
    assert out.read_bytes() == reference
    assert leftovers(tmp_path) == []


def _mount_tmpfs(where: Path, size: int) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                            capture_output=True)
    return result.returncode == 0


def test_full_disk_on_a_real_tiny_filesystem(tiny_models, images_dir, reference, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    # Room for the progress file (about the size of the output) but not for the output beside it.
    size = (len(reference) * 3 // 2 // 4096 + 1) * 4096
    if not _mount_tmpfs(disk, size):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected ENOSPC test covers the code")
    try:
        out = disk / "annotations.json"
        argv = annotate_argv(tiny_models, images_dir, out)
        full = run(argv)
        assert full.returncode == 1, full.stderr[-3000:]
        (line,) = message_lines(full.stderr)
        assert line.startswith("error: disk full") and line.endswith("free space and run the same command again")
        assert leftovers(disk) == [progress_path(out).name]  # no output, no temp file

        subprocess.run(["mount", "-o", f"remount,size={size * 4}", str(disk)], check=True)  # space freed
        assert annotate_here(argv) == (0, [])
        assert out.read_bytes() == reference
        assert leftovers(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_grown_folder_annotates_only_the_new_images(tiny_models, images_dir, all_images, reference, tmp_path):
    """A finished output with the same settings counts as done: only a new image is annotated."""
    folder = tmp_path / "images"
    shutil.copytree(images_dir, folder)
    new = folder / all_images[-1]
    held_back = tmp_path / "held_back"
    new.rename(held_back)
    out = tmp_path / "annotations.json"
    argv = annotate_argv(tiny_models, folder, out)
    assert annotate_here(argv) == (0, all_images[:-1])
    assert [r["image"] for r in load_annotations(out)["images"]] == all_images[:-1]

    held_back.rename(new)
    assert annotate_here(argv) == (0, all_images[-1:])
    expected = json.loads(reference)
    data = load_annotations(out)
    assert data["images"] == expected["images"] and data["skipped"] == expected["skipped"]
    assert leftovers(tmp_path) == ["images"]


def test_one_symlink_rule_for_every_stage(tiny_models, images_dir, tmp_path):
    """Annotation and the gallery accepted links out of the folder, training and prediction refused them
    (before); now a link inside the images folder is followed wherever it points, in every stage."""
    from vlm_annotation import visualize
    from vlm_core.llava_format import resolve_image_path
    folder, outside = tmp_path / "images", tmp_path / "elsewhere"
    folder.mkdir()
    shutil.copytree(images_dir / "scenes", outside / "scenes")
    shutil.copyfile(images_dir / "bus.jpg", outside / "bus.jpg")
    (folder / "bus.jpg").symlink_to(outside / "bus.jpg")        # a file outside the folder
    (folder / "scenes").symlink_to(outside / "scenes")           # a folder outside it
    (folder / "scenes" / "up").symlink_to(folder)                # a loop: not walked again
    out = tmp_path / "annotations.json"
    code, loaded = annotate_here(annotate_argv(tiny_models, folder, out))
    expected = ["bus.jpg"] + [f"scenes/scene_{i}.{'png' if i % 2 else 'jpg'}" for i in range(4)]
    assert code == 0 and loaded == expected
    data = load_annotations(out)
    assert [r["image"] for r in data["images"]] == expected and data["skipped"] == []
    for i, name in enumerate(expected):  # what training and prediction do with each record's path
        assert resolve_image_path(folder, name, f"images[{i}]") == folder / name
    with pytest.raises(InputError, match="escapes --image_dir"):
        resolve_image_path(folder, "../elsewhere/bus.jpg", "images[0]")  # the path as written may not escape
    review = tmp_path / "review"
    assert visualize.main(["--annotation_file", str(out), "--images_dir", str(folder),
                           "--output_dir", str(review)]) == 0
    assert len(list((review / "images").iterdir())) == len(expected)


# ---- the pieces, exactly -------------------------------------------------------------------


SETTINGS = {"seed": 3}


def test_progress_lines_are_read_for_what_they_are_not_where_they_are(tmp_path):
    path = tmp_path / "a.json.progress.jsonl"
    record = {"image": "b.jpg", "skipped": "broken"}
    # What two runs at once left (two headers): both say the same settings, so it resumes.
    path.write_text("".join(json.dumps(x) + "\n" for x in (
        {"header": SETTINGS}, {"header": SETTINGS}, {"image": "a.jpg", "skipped": "x"}, record)))
    log = ProgressLog(path, SETTINGS)
    assert log.done == {"a.jpg", "b.jpg"}
    log.open().close()
    assert path.read_text().count("header") == 2  # nothing added

    # What a second run left after the first removed the file: records, no header. Never misread.
    path.write_text(json.dumps(record) + "\n" + json.dumps({"image": "c.jpg", "skipped": "y"}) + "\n")
    with pytest.raises(InputError, match="line 1: a record before any header line"):
        ProgressLog(path, SETTINGS)
    path.write_text(json.dumps({"header": SETTINGS}) + "\n" + '{"not": "a record"}\n')
    with pytest.raises(InputError, match="line 2: not a line of a progress file"):
        ProgressLog(path, SETTINGS)
    for bad in ('{"image": "a.jpg", "skipped": NaN}', "[" * 100_000 + "]" * 100_000):  # strict, never a traceback
        path.write_text(json.dumps({"header": SETTINGS}) + "\n" + bad + "\n")
        with pytest.raises(InputError, match=r"line 2: .*; delete the file or pass --restart"):
            ProgressLog(path, SETTINGS)
    path.write_text(json.dumps({"header": {"seed": 4}}) + "\n")
    with pytest.raises(InputError, match=r"other settings \(seed: 4 -> 3\)"):
        ProgressLog(path, SETTINGS)
    assert ProgressLog(path, SETTINGS, restart=True).done == set()
    assert not path.exists()  # --restart removed it, and nothing is written before open()

    # Killed between a record and its newline: the record counts (and gets its newline); a partial one does not.
    path.write_text(json.dumps({"header": SETTINGS}) + "\n" + json.dumps(record))
    log = ProgressLog(path, SETTINGS)
    assert log.done == {"b.jpg"}
    log.open().close()
    assert path.read_text().endswith(json.dumps(record) + "\n")
    path.write_text(json.dumps({"header": SETTINGS}) + "\n" + json.dumps(record)[:-1])
    assert ProgressLog(path, SETTINGS).done == set()


def test_a_finished_output_counts_as_done_only_with_the_same_settings(tmp_path, monkeypatch):
    from vlm_annotation.progress import write_annotations_stream, write_from_progress
    out = tmp_path / "a.json"
    records = [{"image": name, "width": 4, "height": 3, "caption": "c", "objects": [], "qa": []}
               for name in ("x.jpg", "y.jpg")]
    write_annotations_stream(out, records, [{"image": "bad.jpg", "reason": "broken"}],
                             {"tool": "t", "images_dir": "d", **SETTINGS})
    finished = out.read_bytes()
    assert ProgressLog(progress_path(out), {"seed": 4}).done == set()        # other settings: redo
    assert ProgressLog(progress_path(out), SETTINGS, restart=True).done == set()
    with monkeypatch.context() as env:
        env.setenv("WORLD_SIZE", "2")                                        # torchrun: redo
        assert ProgressLog(progress_path(out), SETTINGS).done == set()
    log = ProgressLog(progress_path(out), SETTINGS)
    assert log.done == {"x.jpg", "y.jpg"}  # the skipped file is tried again
    log.open()
    log.add_skipped("bad.jpg", "broken")
    log.close()
    write_from_progress(out, [progress_path(out)], {"tool": "t", "images_dir": "d", **SETTINGS},
                        {"x.jpg", "y.jpg", "bad.jpg"})
    assert out.read_bytes() == finished
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # sidecar and lock removed


def test_undecodable_names_are_stored_escaped_and_found_again(tmp_path):
    path = tmp_path / "a.json.progress.jsonl"
    raw = os.fsdecode(b"dir/bad\xff.jpg")
    log = ProgressLog(path, SETTINGS).open()
    log.add_skipped(raw, f"not found: {raw}")
    log.close()
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[1]) == {
        "image": "dir/bad\\xff.jpg", "skipped": "not found: dir/bad\\xff.jpg"}
    assert raw in ProgressLog(path, SETTINGS).done  # a rerun does not redo it


def _hold_lock_in_child(path: Path) -> subprocess.Popen:
    code = ("import sys, time; from vlm_core.runtime import single_writer\n"
            "with single_writer(sys.argv[1], '--output_file'):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], env=_env(), cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "held\n"
    return child


def test_single_writer_refuses_a_live_holder_and_ignores_a_dead_one(tmp_path):
    out = tmp_path / "predictions.jsonl"
    child = _hold_lock_in_child(out)
    try:
        with pytest.raises(OutputBusy, match=rf"--output_file: {out} is being written by another run "
                                             rf"\(pid {child.pid} on {HOST}: -c {out}\)"):
            with single_writer(out, "--output_file"):
                pass
    finally:
        child.kill()  # SIGKILL: no clean-up ran
        child.wait()
    assert (tmp_path / "predictions.jsonl.lock").exists()
    with single_writer(out, "--output_file") as lock:
        assert lock.read_text().startswith(f"pid {os.getpid()} on {HOST}: ")
    assert list(tmp_path.iterdir()) == []  # the lock file goes with its holder


def test_stale_temp_files_of_an_output_are_removed(tmp_path):
    names = [".a.json.k3_x9zqa.tmp", ".a.json.abcdefgh.tmp", ".a.json.progress.jsonl", ".b.json.abcdefgh.tmp",
             ".a.json.toolong12.tmp", "a.json"]
    for name in names:
        (tmp_path / name).write_text("")
    removed = remove_stale_temps(tmp_path / "a.json")
    assert sorted(p.name for p in removed) == [".a.json.abcdefgh.tmp", ".a.json.k3_x9zqa.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {p.name for p in removed})
    with single_writer(tmp_path / "b.json"):
        assert not (tmp_path / ".b.json.abcdefgh.tmp").exists()  # the lock holder cleans up
