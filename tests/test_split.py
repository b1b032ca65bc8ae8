"""Stage 2: split_data.py on hand-built annotation files."""
from __future__ import annotations

import json

import pytest

from vlm_core.schema import load_annotations
from vlm_training import split_data
from vlm_training.split_data import assign_splits, image_key, split_counts


def _record(name: str, n_qa: int = 2) -> dict:
    return {"image": name, "width": 64, "height": 48, "caption": "a scene",
            "objects": [{"id": 0, "label": "can", "bbox": [4, 4, 20, 30], "score": 0.9,
                         "sources": ["yolo"], "description": "Here is a can."}],
            "qa": [{"question": "How many objects are there?", "answer": "There is 1 object in this image.",
                    "type": "count", "object_ids": []}] * n_qa}


def _write(path, names, n_qa=2):
    data = {"images": [_record(n, n_qa) for n in names], "skipped": [{"image": "bad.jpg", "reason": "truncated"}],
            "meta": {"tool_version": "test"}}
    path.write_text(json.dumps(data))
    return path


def _run(tmp_path, inp, *extra):
    out = {s: tmp_path / f"{s}.json" for s in ("train", "val", "test")}
    rc = split_data.main(["--input_file", str(inp), "--train_file", str(out["train"]),
                          "--val_file", str(out["val"]), *extra])
    return rc, out


def _images(path):
    return [r["image"] for r in load_annotations(path)["images"]]


def test_split_is_complete_disjoint_valid_and_deterministic(tmp_path, capsys):
    names = [f"img_{i:03d}.jpg" for i in range(50)]
    inp = _write(tmp_path / "annotations.json", names, n_qa=3)
    rc, out = _run(tmp_path, inp, "--train_ratio", "0.8", "--val_ratio", "0.1", "--seed", "7")
    assert rc == 0
    parts = {s: _images(p) for s, p in out.items()}        # load_annotations validates each file
    assert sorted(sum(parts.values(), [])) == sorted(names)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [40, 5, 5]
    meta = load_annotations(out["val"])["meta"]
    assert meta["tool_version"] == "test"
    assert meta["split"]["name"] == "val" and meta["split"]["seed"] == 7
    assert meta["split"]["images_per_split"] == {"train": 40, "val": 5, "test": 5}
    printed = capsys.readouterr().out
    assert "train:     40 images,     120 Q&A pairs" in printed

    first = {s: p.read_text() for s, p in out.items()}
    # The same images in another order and the same seed: the same images in each split.
    _write(tmp_path / "annotations.json", list(reversed(names)), n_qa=3)
    _run(tmp_path, inp, "--train_ratio", "0.8", "--val_ratio", "0.1", "--seed", "7")
    assert {s: sorted(_images(p)) for s, p in out.items()} == {s: sorted(v) for s, v in parts.items()}
    _write(tmp_path / "annotations.json", names, n_qa=3)
    _run(tmp_path, inp, "--train_ratio", "0.8", "--val_ratio", "0.1", "--seed", "7")
    assert {s: p.read_text() for s, p in out.items()} == first
    # Another seed gives another split.
    _run(tmp_path, inp, "--train_ratio", "0.8", "--val_ratio", "0.1", "--seed", "8")
    assert _images(out["test"]) != parts["test"]


def test_test_file_defaults_beside_val_file(tmp_path):
    inp = _write(tmp_path / "a.json", [f"x{i}.jpg" for i in range(10)])
    sub = tmp_path / "splits"
    rc = split_data.main(["--input_file", str(inp), "--train_file", str(sub / "tr.json"),
                          "--val_file", str(sub / "va.json")])
    assert rc == 0 and (sub / "test.json").is_file()


def test_adding_images_moves_only_images_next_to_a_cut():
    old = [f"old/{i}.jpg" for i in range(200)]
    new = [f"new/{i}.jpg" for i in range(20)]
    before, _ = assign_splits(old, 0.8, 0.1, seed=3)
    after, _ = assign_splits(old + new, 0.8, 0.1, seed=3)
    moved = [im for im in old if before[im] != after[im]]
    # Each of the two cuts moves by at most the 20 added images, so at most 2 * 20 old images
    # change split; a reshuffle would move about 2 * 0.8 * 0.2 * 200 = 64.
    assert len(moved) <= 2 * len(new)
    order = {"train": 0, "val": 1, "test": 2}
    for im in moved:
        assert abs(order[before[im]] - order[after[im]]) == 1       # only to the neighbouring split

    # The movers sit next to a cut: between the old and the new position of the cut they crossed.
    def cut_keys(names, n):
        (n_train, n_val, _), _ = split_counts(n, 0.8, 0.1)
        keys = sorted(image_key(im, 3) for im in names)
        return [(keys[c - 1], keys[c]) for c in (n_train, n_train + n_val)]

    bands = [(min(o[0], n[0]), max(o[1], n[1]))
             for o, n in zip(cut_keys(old, len(old)), cut_keys(old + new, len(old + new)))]
    for im in moved:
        assert any(lo <= image_key(im, 3) <= hi for lo, hi in bands), im
    assert split_counts(200, 0.8, 0.1)[0] == (160, 20, 20) and split_counts(220, 0.8, 0.1)[0] == (176, 22, 22)


@pytest.mark.parametrize("n, ratios, expected", [
    (1, (0.8, 0.1), (1, 0, 0)),
    (2, (0.8, 0.1), (1, 1, 0)),
    (3, (0.8, 0.1), (1, 1, 1)),
    (6, (0.8, 0.1), (4, 1, 1)),
    (10, (0.8, 0.1), (8, 1, 1)),
    (10, (0.5, 0.5), (5, 5, 0)),
    (10, (1.0, 0.0), (10, 0, 0)),
    (3, (0.7, 0.3), (2, 1, 0)),
    (7, (0.1, 0.0), (1, 0, 6)),
    (4, (0.6, 0.2), (2, 1, 1)),
])
def test_split_counts(n, ratios, expected):
    counts, _ = split_counts(n, *ratios)
    assert counts == expected


def test_tiny_inputs_say_what_they_did(tmp_path, capsys):
    inp = _write(tmp_path / "one.json", ["only.jpg"])
    rc, out = _run(tmp_path, inp)
    assert rc == 0
    assert _images(out["train"]) == ["only.jpg"] and _images(out["val"]) == [] and _images(out["test"]) == []
    printed = capsys.readouterr().out
    assert "val split is empty" in printed and "test split is empty" in printed
    assert load_annotations(out["train"])["meta"]["split"]["notes"]

    inp = _write(tmp_path / "three.json", ["a.jpg", "b.jpg", "c.jpg"])
    rc, out = _run(tmp_path, inp)
    assert rc == 0 and [len(_images(out[s])) for s in ("train", "val", "test")] == [1, 1, 1]
    assert "moved 1 image from train to test" in capsys.readouterr().out


@pytest.mark.parametrize("train, val, message", [
    ("0", "0.1", "--train_ratio must be in (0, 1]"),
    ("-0.2", "0.1", "--train_ratio must be in (0, 1]"),
    ("1.2", "0", "--train_ratio must be in (0, 1]"),
    ("0.8", "-0.1", "--val_ratio must be >= 0"),
    ("0.8", "0.3", "must be <= 1"),
    ("nan", "0.1", "finite"),
])
def test_bad_ratios_exit_2_and_write_nothing(tmp_path, capsys, train, val, message):
    inp = _write(tmp_path / "a.json", ["a.jpg", "b.jpg"])
    rc, out = _run(tmp_path, inp, "--train_ratio", train, "--val_ratio", val)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not any(p.exists() for p in out.values())


def test_ratios_summing_to_one_leave_test_empty(tmp_path):
    inp = _write(tmp_path / "a.json", [f"{i}.jpg" for i in range(10)])
    rc, out = _run(tmp_path, inp, "--train_ratio", "0.7", "--val_ratio", "0.3")
    assert rc == 0 and _images(out["test"]) == [] and len(_images(out["val"])) == 3


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    ("{not json", "invalid JSON"),
    (json.dumps({"images": [{"image": "a.jpg", "width": 10, "height": 10, "objects": [
        {"id": 0, "label": "can", "bbox": [5, 5, 2, 2], "score": 0.5, "sources": ["yolo"]}]}]}),
     "images[0].objects[0].bbox"),
    (json.dumps({"images": []}), "images: the list is empty"),
])
def test_malformed_input_exit_2_and_write_nothing(tmp_path, capsys, content, message):
    inp = tmp_path / "annotations.json"
    if content is not None:
        inp.write_text(content)
    rc, out = _run(tmp_path, inp)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and str(inp) in err and len(err.strip().splitlines()) == 1
    assert not any(p.exists() for p in out.values())


def test_output_that_would_overwrite_the_input_is_refused(tmp_path, capsys):
    inp = _write(tmp_path / "a.json", ["a.jpg", "b.jpg"])
    rc = split_data.main(["--input_file", str(inp), "--train_file", str(inp), "--val_file", str(tmp_path / "v.json")])
    assert rc == 2 and "--train_file" in capsys.readouterr().err
    assert load_annotations(inp)["images"][0]["image"] == "a.jpg"


def test_a_killed_splits_marker_temp_is_removed_by_the_rerun(tmp_path):
    """What a split killed while writing its pending markers leaves (``..test.json.split-pending.*.tmp``)
    was never removed (issue 28); the next run, holding the locks, removes it."""
    inp = _write(tmp_path / "annotations.json", [f"img_{i:02d}.jpg" for i in range(10)])
    planted = [tmp_path / f"..{s}.json.split-pending.abcd123{k}.tmp" for k, s in enumerate(("train", "val", "test"))]
    for p in planted:
        p.write_text('{"generation": "x"')
    rc, out = _run(tmp_path, inp)
    assert rc == 0 and not any(p.exists() for p in planted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json", "test.json", "train.json", "val.json"]
