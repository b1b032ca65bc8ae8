"""Every file stage streams (issue 15) and reads strictly (issue 16): split, convert, merge and
the readers/writers they share.

tests/data/stream/ holds a small annotation file, two shards of it, and the outputs the code
of commit 19f656e (before streaming: whole-file json.load / json.dumps) wrote from them
(``expected_*``): the streamed stages must write the same bytes. When Q&A text moved from box
numbers to box placeholders (``<box:ID>``), the annotation-format files (inputs, split and merge
outputs) had each box of their Q&A text replaced by its object's placeholder and nothing else;
``expected_llava*.json`` stayed byte for byte what the old code wrote from the old inputs.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from vlm_annotation import merge_annotations
from vlm_core import io_utils
from vlm_core.io_utils import (
    InputError,
    JsonlAppender,
    RecordWriter,
    iter_jsonl,
    read_json,
    stream_json,
    stream_jsonl,
)
from vlm_core.llava_format import LlavaWriter, iter_llava_records, resolve_image_path
from vlm_core.schema import AnnotationError, AnnotationReader, AnnotationWriter, load_annotations
from vlm_training import convert_to_llava_format as convert
from vlm_training import split_data

DATA = Path(__file__).parent / "data" / "stream"
REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
SPLIT_FLAGS = ["--train_ratio", "0.6", "--val_ratio", "0.2", "--seed", "3"]


def _split(d: Path, inp: str, ext: str = ".json", *extra) -> int:
    return split_data.main(["--input_file", inp, "--train_file", str(d / f"train{ext}"),
                            "--val_file", str(d / f"val{ext}"), "--test_file", str(d / f"test{ext}"),
                            *SPLIT_FLAGS, *extra])


def _to_jsonl(src: Path, dst: Path) -> Path:
    """The same annotation file in the JSONL layout (written by the JSONL writer)."""
    reader = AnnotationReader(src)
    with AnnotationWriter(dst) as w:
        for rec in reader:
            w.write(rec)
        w.finish(reader.skipped, reader.meta)
    return dst


@pytest.fixture
def work(tmp_path, monkeypatch):
    for p in DATA.glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    monkeypatch.chdir(tmp_path)  # the split meta records --input_file as given
    return tmp_path


# ----------------------------------------------------------------------------- bytes as before

def test_split_convert_merge_write_the_bytes_of_the_whole_file_code(work):
    assert _split(work, "annotations.json") == 0
    for s in SPLITS:
        assert (work / f"{s}.json").read_bytes() == (DATA / f"expected_{s}.json").read_bytes(), s
    for extra, expected in (([], "expected_llava.json"), (["--max_turns", "2"], "expected_llava_max2.json")):
        assert convert.main(["--annotation_file", "annotations.json", "--output_file", "out.json", *extra]) == 0
        assert (work / "out.json").read_bytes() == (DATA / expected).read_bytes()
    assert merge_annotations.main(["--input_files", "shard1.json", "shard0.json", "--output_file", "m.json"]) == 0
    assert (work / "m.json").read_bytes() == (DATA / "expected_merged.json").read_bytes()
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []  # no temps, no markers


def test_jsonl_inputs_give_the_same_outputs(work):
    _to_jsonl(work / "annotations.json", work / "annotations.jsonl")
    for k in (0, 1):
        _to_jsonl(work / f"shard{k}.json", work / f"shard{k}.jsonl")
    (work / "from_jsonl").mkdir()
    assert _split(work / "from_jsonl", "annotations.jsonl") == 0
    for s in SPLITS:
        # Only the recorded input name differs.
        got = (work / "from_jsonl" / f"{s}.json").read_text(encoding="utf-8")
        assert got.replace('"annotations.jsonl"', '"annotations.json"') == \
            (DATA / f"expected_{s}.json").read_text(encoding="utf-8")
    assert convert.main(["--annotation_file", "annotations.jsonl", "--output_file", "out.json"]) == 0
    assert (work / "out.json").read_bytes() == (DATA / "expected_llava.json").read_bytes()
    assert merge_annotations.main(["--input_files", "shard1.jsonl", "shard0.jsonl", "--output_file", "m.json"]) == 0
    assert (work / "m.json").read_bytes() == (DATA / "expected_merged.json").read_bytes()


def test_jsonl_outputs_hold_the_same_content(work):
    assert _split(work, "annotations.json", ".jsonl") == 0
    for s in SPLITS:
        lines = (work / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()
        assert json.loads(lines[-1]) == {"meta": json.loads((DATA / f"expected_{s}.json").read_text())["meta"]}
        assert load_annotations(work / f"{s}.jsonl") == load_annotations(DATA / f"expected_{s}.json")
    assert convert.main(["--annotation_file", "train.jsonl", "--output_file", "train_llava.jsonl"]) == 0
    assert convert.main(["--annotation_file", str(DATA / "expected_train.json"), "--output_file", "ref.json"]) == 0
    assert list(iter_llava_records(work / "train_llava.jsonl")) == list(iter_llava_records(work / "ref.json"))
    assert merge_annotations.main(["--input_files", "shard1.json", "shard0.json", "--output_file", "m.jsonl"]) == 0
    assert load_annotations(work / "m.jsonl") == load_annotations(DATA / "expected_merged.json")


def test_merge_of_unsorted_inputs_goes_through_a_temp_file(work, capsys):
    assert merge_annotations.main(["--input_files", "annotations.json", "--output_file", "m.json"]) == 0
    assert "not sorted by image path" in capsys.readouterr().out
    merged = load_annotations(work / "m.json")
    assert merged["images"] == load_annotations(DATA / "expected_merged.json")["images"]
    assert [p.name for p in work.iterdir() if "spool" in p.name] == []


# ----------------------------------------------------------------------------- memory

def _peak_while_reading(path: Path) -> tuple[int, int]:
    import numpy  # noqa: F401  (imported by the duplicate check: not part of what is measured)
    tracemalloc.start()
    n = sum(1 for _ in AnnotationReader(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return n, peak


def test_reading_memory_does_not_grow_with_the_file(tmp_path):
    """Peak Python memory while streaming: the same for a file 4x as big, and a fraction of it."""
    rng = random.Random(0)
    peaks = {}
    for n in (1000, 4000):
        path = tmp_path / f"big{n}.json"
        with AnnotationWriter(path, style="indent") as w:
            for i in range(n):
                w.write({"image": f"d/{i:05d}.jpg", "width": 100, "height": 100, "caption": "x" * rng.randint(0, 3000),
                         "objects": [{"id": 0, "label": "can", "bbox": [1.5, 2, 30, 40.25], "score": 0.5,
                                      "sources": ["yolo"], "description": "y" * 2000}], "qa": []})
            w.finish([], {})
        count, peaks[n] = _peak_while_reading(path)
        assert count == n
    size = (tmp_path / "big4000.json").stat().st_size
    assert size > 15_000_000
    # Only the 16-byte path digests grow (64 KB for 4000 images); the rest is one chunk and one record.
    assert peaks[4000] < peaks[1000] + 200_000 and peaks[4000] < size / 3, (peaks, size)


# ----------------------------------------------------------------------------- the streaming parser

def _doc(rng: random.Random):
    def value(depth):
        k = rng.random()
        if depth > 3 or k < 0.3:
            return rng.choice([rng.randint(-10**6, 10**6), rng.uniform(-1e3, 1e3), 1e-05, 1e22, True, None,
                               "", "é\u2028\"\\\n\t" * rng.randint(0, 3), 2**70])
        if k < 0.6:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {f"k{j}é": value(depth + 1) for j in range(rng.randint(0, 4))}
    return value


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_stream_json_equals_json_load_at_every_chunk_size(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(io_utils, "_CHUNK", chunk)
    rng = random.Random(chunk)
    value = _doc(rng)
    for trial in range(15):
        items = [value(0) for _ in range(rng.randint(0, 6))] + [{"image": "x", "v": [1.5, -2e-7]}]
        doc = {"before": value(1), "images": items, "after": value(1)}
        path = tmp_path / f"d{trial}.json"
        indent = rng.choice([None, 1, 2])
        path.write_text(json.dumps(doc, indent=indent, ensure_ascii=rng.random() < 0.5), encoding="utf-8")
        got = list(stream_json(path, "images"))
        assert [v for k, v in got if k is None] == items
        assert {k: v for k, v in got if k not in (None, "images")} == {"before": doc["before"], "after": doc["after"]}
        path.write_text(json.dumps(items, indent=indent), encoding="utf-8")
        assert [v for _, v in stream_json(path)] == items


def test_writers_write_exactly_what_json_dumps_writes(tmp_path):
    rng = random.Random(1)
    value = _doc(rng)
    floats = [rng.uniform(0, 1) * 10.0 ** rng.randint(-9, 20) for _ in range(3000)]
    for trial in range(20):
        records = [value(0) for _ in range(rng.randint(0, 5))] + [{"f": floats[trial * 100:(trial + 1) * 100]}]
        tail = {"skipped": [value(2)], "meta": {"m": value(1)}}
        with RecordWriter(tmp_path / "a.json", "images") as w:
            w.write_many(records)
            w.close(tail)
        assert (tmp_path / "a.json").read_text(encoding="utf-8") == \
            json.dumps({"images": records, **tail}, indent=2, ensure_ascii=False) + "\n"
        with LlavaWriter(tmp_path / "l.json") as w:
            w.write_many(records)
        assert (tmp_path / "l.json").read_text(encoding="utf-8") == json.dumps(records, indent=2, ensure_ascii=False) + "\n"
        with RecordWriter(tmp_path / "a.jsonl", "images") as w:
            w.write_many(records)
            w.close(tail)
        assert [v for _, v in stream_jsonl(tmp_path / "a.jsonl")] == records + [{k: v} for k, v in tail.items()]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    with pytest.raises(InputError, match="NaN"):
        with AnnotationWriter(path) as w:
            w.write({"image": "a.jpg"})
            w.finish([], {"loss": math.nan})
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


# ----------------------------------------------------------------------------- strict reading

NESTED = "[" * 100_000 + "]" * 100_000


def _good_record(name="a.jpg"):
    return {"image": name, "width": 10, "height": 10, "caption": "", "objects": [],
            "qa": [{"question": "How many objects are there?", "answer": "None.", "type": "count", "object_ids": []}]}


@pytest.mark.parametrize("text, needle", [
    ('{"images": [], "meta": {"lr": NaN}}', "meta.lr: NaN is not a JSON number"),
    ('{"images": [], "meta": {"x": [1, {"y": -Infinity}]}}', "meta.x[1].y: -Infinity is not a JSON number"),
    ('{"images": [], "meta": {"big": 1e400}}', "meta.big: 1e400 is not a JSON number"),
    ('{"images": [' + json.dumps(_good_record())[:-1] + ', "extra": NaN}]}', "images[0].extra: NaN"),
    ('{"images": [], "meta": ' + NESTED + "}", "nested too deeply"),
    ('{"images": [' + NESTED + "]}", "nested too deeply"),
    ('{"images": [' + json.dumps(_good_record("a\u0000.jpg")) + "]}", "images[0].image: contains a NUL byte"),
])
def test_every_stage_refuses_bad_json_in_one_line(tmp_path, capsys, text, needle):
    inp = tmp_path / "in.json"
    inp.write_text(text)
    runs = {
        "split": lambda: _split(tmp_path, str(inp)),
        "convert": lambda: convert.main(["--annotation_file", str(inp), "--output_file", str(tmp_path / "o.json")]),
        "merge": lambda: merge_annotations.main(["--input_files", str(inp), "--output_file", str(tmp_path / "m.json")]),
    }
    for name, run in runs.items():
        assert run() == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and str(inp) in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]


def test_llava_and_jsonl_readers_are_strict_too(tmp_path):
    path = tmp_path / "l.json"
    path.write_text(NESTED)
    with pytest.raises(InputError, match="nested too deeply"):
        list(iter_llava_records(path))
    path.write_text('[{"id": "a#0", "image": "a\\u0000.jpg", "conversations": []}]')
    with pytest.raises(InputError, match=r"record 0 \(id 'a#0'\): field 'image': image path .* NUL byte"):
        list(iter_llava_records(path))
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"a": 1}\n{"a": NaN}\n')
    with pytest.raises(InputError, match=r"p.jsonl: line 2: a: NaN is not a JSON number"):
        list(iter_jsonl(jl))
    jl.write_text('{"a": 1}\n' + NESTED + "\n")
    with pytest.raises(InputError, match="line 2: nested too deeply"):
        list(iter_jsonl(jl))
    assert io_utils.parse_line(b'{"a": [1, 2.5]}', jl, 7) == {"a": [1, 2.5]}
    with pytest.raises(InputError, match=r"p.jsonl: line 7: invalid JSON: Expecting"):
        io_utils.parse_line(b'{"a": ', jl, 7)
    small = tmp_path / "s.json"
    small.write_text('{"x": Infinity}')
    with pytest.raises(InputError, match=r"s.json: x: Infinity is not a JSON number"):
        read_json(small)


def test_a_path_listed_twice_is_named_like_the_whole_file_validator(tmp_path):
    path = tmp_path / "a.json"
    recs = [_good_record(f"{i}.jpg") for i in range(5)] + [_good_record("3.jpg")]
    path.write_text(json.dumps({"images": recs}))
    with pytest.raises(AnnotationError) as err:
        list(AnnotationReader(path))
    assert str(err.value) == f"{path}: images[5].image: '3.jpg' already listed at images[3]"


def test_equal_path_hashes_are_checked_against_the_paths(tmp_path, monkeypatch):
    """The duplicate check keeps 8-byte hashes; when two are equal the paths themselves decide."""
    from vlm_core import schema
    monkeypatch.setattr(schema, "_path_key", lambda image: len(image))    # many equal "hashes"
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": [_good_record(f"{i}.jpg") for i in range(8)]}))
    assert len(list(AnnotationReader(path))) == 8                           # all distinct: accepted
    path.write_text(json.dumps({"images": [_good_record(n) for n in ("a.jpg", "b.jpg", "cc.jpg", "b.jpg", "a.jpg")]}))
    with pytest.raises(AnnotationError, match=r"images\[3\].image: 'b.jpg' already listed at images\[1\]"):
        list(AnnotationReader(path))


def test_appender_keeps_a_complete_last_line_and_drops_a_partial_one(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}')            # killed between the record and its newline
    assert [r for _, r in iter_jsonl(path)] == [{"a": 1}, {"a": 2}]
    with JsonlAppender(path) as out:
        out.write({"a": 3})
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n{"a": 3}\n'
    path.write_text('{"a": 1}\n{"a": 2, "b": "caf\u00e9')    # killed inside a record
    with JsonlAppender(path) as out:
        out.write({"a": 3})
    assert path.read_text() == '{"a": 1}\n{"a": 3}\n'


# ----------------------------------------------------------------------------- one symlink rule

def test_image_paths_one_rule_symlinks_followed_paths_checked(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "real.jpg").write_bytes(b"x")
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    os.symlink(outside / "real.jpg", images / "link.jpg")
    os.symlink(outside, images / "sub" / "linked_dir")
    os.symlink(outside / "gone.jpg", images / "dangling.jpg")
    assert resolve_image_path(images, "link.jpg", "r").read_bytes() == b"x"
    assert resolve_image_path(images, "sub/linked_dir/real.jpg", "r").read_bytes() == b"x"
    for rel, needle in (("../elsewhere/real.jpg", "escapes --image_dir"), (str(outside / "real.jpg"), "escapes"),
                        ("a\x00.jpg", "NUL byte"), ("dangling.jpg", "image not found")):
        with pytest.raises(InputError, match=needle):
            resolve_image_path(images, rel, "r")


# ----------------------------------------------------------------------------- split: all or nothing

_KILL_AT_RENAME = r"""
import os, signal, sys
from vlm_training import split_data
targets = {os.path.abspath(p) for p in sys.argv[2:5]}
real = os.replace
def replace(src, dst):
    real(src, dst)
    if os.path.abspath(dst) in targets:  # the first of the three split files is in place
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
sys.exit(split_data.main(["--input_file", sys.argv[1], "--train_file", sys.argv[2], "--val_file", sys.argv[3],
                          "--test_file", sys.argv[4], "--seed", sys.argv[5]]))
"""


def test_split_killed_while_replacing_the_files_is_caught_and_a_rerun_repairs_it(work, capsys):
    outs = [str(work / f"{s}.json") for s in SPLITS]
    assert split_data.main(["--input_file", "annotations.json", "--train_file", outs[0], "--val_file", outs[1],
                            "--test_file", outs[2], "--seed", "1"]) == 0
    old = {s: (work / f"{s}.json").read_bytes() for s in SPLITS}
    res = subprocess.run([sys.executable, "-c", _KILL_AT_RENAME, "annotations.json", *outs, "2"],
                         cwd=work, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert res.returncode == -signal.SIGKILL, res.stderr
    new = {s: (work / f"{s}.json").read_bytes() for s in SPLITS}
    assert new["train"] != old["train"] and new["val"] == old["val"] and new["test"] == old["test"]  # a mix
    # The mix does not go unnoticed: every split file carries the marker, and convert refuses it.
    assert all((work / f".{s}.json.split-pending").exists() for s in SPLITS)
    capsys.readouterr()
    assert convert.main(["--annotation_file", outs[1], "--output_file", str(work / "v.json")]) == 2
    err = capsys.readouterr().err
    assert "interrupted while it replaced the split files" in err and len(err.strip().splitlines()) == 1
    # The same command again writes all three anew and removes the markers and the killed run's temps.
    assert split_data.main(["--input_file", "annotations.json", "--train_file", outs[0], "--val_file", outs[1],
                            "--test_file", outs[2], "--seed", "2"]) == 0
    assert "was interrupted while replacing them" in capsys.readouterr().out
    parts = {s: [r["image"] for r in load_annotations(work / f"{s}.json")["images"]] for s in SPLITS}
    assert sorted(sum(parts.values(), [])) == sorted(r["image"] for r in load_annotations(work / "annotations.json")["images"])
    assert {load_annotations(work / f"{s}.json")["meta"]["split"]["seed"] for s in SPLITS} == {2}
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []
    assert convert.main(["--annotation_file", outs[1], "--output_file", str(work / "v.json")]) == 0


def test_split_assigner_ranks_shared_keys_by_path_like_assign_splits():
    """Paths with the same key (``a\\b`` and ``a/b`` hash alike) are ranked by path in both ways."""
    names = [f"d{i}/x.jpg" for i in range(12)] + [f"d{i}\\x.jpg" for i in range(12)]
    expected, _ = split_data.assign_splits(names, 0.5, 0.25, seed=4)
    from array import array
    keys = array("Q", [split_data.image_key_int(n, 4) for n in names])
    (n_train, n_val, _), _ = split_data.split_counts(len(names), 0.5, 0.25)
    assigner = split_data.Assigner(keys, n_train, n_val)
    assert len(assigner.tied) == 12
    for n in names:
        if split_data.image_key_int(n, 4) in assigner.tied:
            assigner.add_tied(split_data.image_key_int(n, 4), n)
    assert {n: assigner.split_of(split_data.image_key_int(n, 4), n) for n in names} == expected


def test_bench_scale_runs_every_stage_on_generated_files(tmp_path, capsys):
    """The benchmark's generator writes valid files and every stage accepts them (a small N)."""
    sys.path.insert(0, str(REPO))
    from benchmarks import bench_scale
    for layout in ("json", "jsonl"):
        assert bench_scale.main(["--images", "40", "--predictions", "120", "--layout", layout,
                                 "--keep_dir", str(tmp_path / layout)]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert [line.split()[0] for line in out[2:-2]] == ["json", "split", "convert", "merge", "pred", "evaluate"]
        assert "lower is better" in out[-2] and re.fullmatch(r"ratio: \d+\.\d\d", out[-1])
        ext = "." + layout
        assert load_annotations(tmp_path / layout / f"annotations{ext}")["meta"]["tool_version"] == "bench"
        assert sum(len(load_annotations(tmp_path / layout / f"{s}{ext}")["images"]) for s in SPLITS) == 40
