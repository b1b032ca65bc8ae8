"""export_annotations.py --format yolo, the cases that lost or leaked data (issue 28): images that would
share a label file, a received file's meta.images_dir trusted for copies, a killed export's temp folder."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "vlm_annotation" / "export_annotations.py")


def _annotation_file(tmp_path: Path, names: list[str], meta_dir: str) -> Path:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    records = []
    for k, name in enumerate(names):
        Image.new("RGB", (40, 30), (90, 160, 60)).save(images / name)
        records.append({"image": name, "width": 40, "height": 30, "caption": "grass", "qa": [],
                        "objects": [{"id": 0, "label": ["can", "glass"][k % 2], "bbox": [1.0, 2.0, 20.0, 25.0],
                                     "score": 0.9, "sources": ["yolo"], "description": ""}]})
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": records, "skipped": [], "meta": {"images_dir": meta_dir}}))
    return path


def _export(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, "--format", "yolo", *argv], capture_output=True, text=True,
                          **kwargs)


def test_images_sharing_a_label_file_are_refused_and_nothing_is_written(tmp_path):
    path = _annotation_file(tmp_path, ["scene.jpg", "scene.png", "other.jpg"], str(tmp_path / "images"))
    out = tmp_path / "ds"
    done = _export("--annotation_file", str(path), "--output_dir", str(out))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "scene.jpg and scene.png" in done.stderr
    assert "labels/train/scene.txt" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json", "images"]


def test_copies_come_only_from_a_folder_the_user_names(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    # A received file whose meta.images_dir names another folder holding files of the same names.
    path = _annotation_file(tmp_path, ["hostname.png"], str(secrets))
    (secrets / "hostname.png").write_bytes((tmp_path / "images" / "hostname.png").read_bytes())
    out = tmp_path / "ds"
    done = _export("--annotation_file", str(path), "--output_dir", str(out), "--copy_images")
    assert done.returncode == 2 and "--copy_images needs --images_dir" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and not out.exists()
    # Named explicitly, the copy goes ahead from that folder.
    done = _export("--annotation_file", str(path), "--output_dir", str(out), "--copy_images",
                   "--images_dir", str(tmp_path / "images"))
    assert done.returncode == 0, done.stderr
    copy = out / "images" / "train" / "hostname.png"
    assert copy.is_file() and not copy.is_symlink()


def test_a_killed_exports_temp_folder_is_removed_by_the_next_export(tmp_path):
    names = [f"img{k:03d}.png" for k in range(400)]
    path = _annotation_file(tmp_path, names, str(tmp_path / "images"))
    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, SCRIPT, "--format", "yolo", "--annotation_file", str(path),
                             "--output_dir", str(out), "--copy_images", "--images_dir", str(tmp_path / "images")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    temps = []
    while time.monotonic() < deadline and not temps and proc.poll() is None:
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".ds.") and p.name.endswith(".tmp")]
        time.sleep(0.005)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:  # it finished before the kill: plant what a killed run leaves
        shutil.rmtree(out)
        (tmp_path / ".ds.abcd1234.tmp" / "images").mkdir(parents=True)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".ds.") and p.name.endswith(".tmp")]
    done = _export("--annotation_file", str(path), "--output_dir", str(out), "--images_dir", str(tmp_path / "images"))
    assert done.returncode == 0, done.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]
    assert len(list((out / "labels" / "train").iterdir())) == 400
