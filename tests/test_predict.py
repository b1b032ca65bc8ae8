"""predict.py on the tiny LLaVA: one line per question, resumable without duplicates, shardable, bad input."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from vlm_core.io_utils import write_json_atomic
from vlm_inference import predict
from vlm_inference.vlm_inference import VLMInference

MAX_NEW = "6"


def _record(rid, image, turns, qa_types=None):
    conv = []
    for k, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + q})
        conv.append({"from": "gpt", "value": a})
    rec = {"id": rid, "image": image, "width": 0, "height": 0, "conversations": conv}
    if qa_types is not None:
        rec["qa_types"] = qa_types
    return rec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Five records (seven questions) on three images, one record with three turns, one without qa_types."""
    d = tmp_path_factory.mktemp("predict_data")
    images = d / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(images / "a.jpg")
    Image.new("RGB", (30, 50), (30, 200, 30)).save(images / "b.png")
    Image.new("RGB", (40, 40), (30, 30, 200)).save(images / "sub" / "c.png")
    records = [
        _record("a.jpg#0", "a.jpg", [("How many cans are there?", "There are 2 cans in this image."),
                                     ("Is there a glass in this image?", "No."),
                                     ("Where is the can?", "On the left.")], ["count", "exists", "location"]),
        _record("b.png#0", "b.png", [("How many objects are there?", "There is 1 object in this image.")],
                ["count"]),
        _record("sub/c.png#0", "sub/c.png", [("Is there a bottle in this image?", "Yes.")]),
        _record("a.jpg#1", "a.jpg", [("Where is the bottle?", "On the grass.")], ["location"]),
        _record("b.png#1", "b.png", [("What is the object in this region: [0.10, 0.20, 0.50, 0.60]? "
                                      "Answer with one word.", "can")], ["region_label"]),
    ]
    data = d / "test_llava.json"
    write_json_atomic(data, records)
    return data, images, records


def _run(tiny_models, data, images, out, *extra):
    return predict.main(["--model_path", str(tiny_models["llava"]), "--data", str(data), "--image_dir", str(images),
                         "--output_file", str(out), "--max_new_tokens", MAX_NEW, *extra])


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


EXPECTED_KEYS = [("a.jpg#0", 0), ("a.jpg#0", 1), ("a.jpg#0", 2), ("b.png#0", 0), ("sub/c.png#0", 0),
                 ("a.jpg#1", 0), ("b.png#1", 0)]


@pytest.fixture(scope="module")
def full_run(tiny_models, dataset, tmp_path_factory):
    data, images, _ = dataset
    out = tmp_path_factory.mktemp("predict_out") / "predictions.jsonl"
    assert _run(tiny_models, data, images, out, "--batch_size", "3") == 0
    return out, _lines(out)


def test_one_line_per_question_with_the_contract_fields(full_run, dataset):
    _, lines = full_run
    assert [(r["id"], r["turn"]) for r in lines] == EXPECTED_KEYS
    first = lines[0]
    assert set(first) == {"id", "image", "turn", "question", "answer", "reference", "type", "model"}
    assert first["image"] == "a.jpg" and first["question"] == "How many cans are there?"
    assert first["reference"] == "There are 2 cans in this image." and first["type"] == "count"
    assert [r["type"] for r in lines] == ["count", "exists", "location", "count", None, "location", "region_label"]
    assert lines[2]["question"] == "Where is the can?" and lines[2]["reference"] == "On the left."
    assert all(isinstance(r["answer"], str) and r["answer"] == r["answer"].strip() for r in lines)


def test_answers_equal_single_questions_on_the_same_image(full_run, dataset, tiny_models):
    """Batched prediction = one question at a time; a later turn is asked as a fresh first turn."""
    _, images, _ = dataset
    _, lines = full_run
    vlm = VLMInference(tiny_models["llava"])
    for r in lines:
        assert r["answer"] == vlm.answer_question(images / r["image"], r["question"], max_new_tokens=int(MAX_NEW))


def test_resume_skips_done_questions_without_duplicates(full_run, dataset, tiny_models, tmp_path, capsys):
    data, images, _ = dataset
    full, lines = full_run
    out = tmp_path / "predictions.jsonl"
    text = full.read_text(encoding="utf-8").splitlines(keepends=True)
    # Two finished lines and a third cut short, as a killed run leaves them.
    out.write_text("".join(text[:2]) + text[2][:25], encoding="utf-8")
    capsys.readouterr()
    assert _run(tiny_models, data, images, out, "--batch_size", "2") == 0
    assert "5 answers written" in capsys.readouterr().out
    resumed = _lines(out)
    assert sorted((r["id"], r["turn"]) for r in resumed) == sorted(EXPECTED_KEYS)
    assert resumed == lines  # same order, same answers, the cut line redone
    before = out.read_bytes()
    assert _run(tiny_models, data, images, out) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert out.read_bytes() == before


def test_resume_refuses_answers_of_another_model(full_run, dataset, tiny_models, tmp_path, capsys):
    data, images, _ = dataset
    full, _ = full_run
    other = tmp_path / "other_model"
    shutil.copytree(tiny_models["llava"], other)
    out = tmp_path / "predictions.jsonl"
    out.write_text("".join(full.read_text(encoding="utf-8").splitlines(keepends=True)[:2]), encoding="utf-8")
    before = out.read_bytes()
    capsys.readouterr()
    assert predict.main(["--model_path", str(other), "--data", str(data), "--image_dir", str(images),
                 "--output_file", str(out), "--max_new_tokens", MAX_NEW]) == 2
    err = capsys.readouterr().err
    assert "line 1 was written by another model" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before


def test_resume_refuses_a_file_of_other_questions(full_run, dataset, tiny_models, tmp_path, capsys):
    data, images, records = dataset
    full, _ = full_run
    other = tmp_path / "other.json"
    write_json_atomic(other, records[:1])
    out = tmp_path / "predictions.jsonl"
    out.write_text(full.read_text(encoding="utf-8"), encoding="utf-8")
    capsys.readouterr()
    assert _run(tiny_models, other, images, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 4 (id 'b.png#0' turn 0) answers a question that is not in --data" in err[0]


def test_shards_cover_every_question_once(full_run, dataset, tiny_models, tmp_path):
    data, images, _ = dataset
    _, lines = full_run
    shards = []
    for k in range(3):
        out = tmp_path / f"pred_{k}.jsonl"
        # --num_chunks/--chunk_idx are the old names (LLaVA's) of --num_shards/--shard_index.
        flags = ["--num_shards", "3", "--shard_index", str(k)] if k else ["--num_chunks", "3", "--chunk_idx", "0"]
        assert _run(tiny_models, data, images, out, *flags) == 0
        shards.append(_lines(out) if out.exists() else [])
    ids = [{r["id"] for r in shard} for shard in shards]
    assert [len(s) for s in ids] == [1, 2, 2]  # records 0 | 1-2 | 3-4
    assert sum(shards, []) == lines


def test_images_folder_flag_takes_the_shared_aliases(dataset, tiny_models, tmp_path):
    data, images, _ = dataset
    for flag in ("--image_dir", "--images_dir"):
        args = predict.parse_args(["--model_path", str(tiny_models["llava"]), "--data", str(data), flag, str(images),
                                   "--output_file", str(tmp_path / "p.jsonl")])
        assert args.image_dir == Path(images)


def test_shard_bounds_are_contiguous_and_complete():
    assert [predict.shard_bounds(10, 4, k) for k in range(4)] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert [predict.shard_bounds(2, 3, k) for k in range(3)] == [(0, 0), (0, 1), (1, 2)]


def _bad(tiny_models, tmp_path, records=None, images=None, extra=(), raw=None):
    data = tmp_path / "bad_llava.json"
    if raw is not None:
        data.write_text(raw, encoding="utf-8")
    else:
        write_json_atomic(data, records)
    out = tmp_path / "out.jsonl"
    rc = predict.main(["--model_path", str(tiny_models["llava"]), "--data", str(data),
                       "--image_dir", str(images or tmp_path), "--output_file", str(out), *extra])
    return rc, out


@pytest.mark.parametrize("case, message", [
    ("missing_image", "record 0 (id 'x#0'): image not found"),
    ("empty_question", "record 0 (id 'a.jpg#0'): conversations[0].value: empty question"),
    ("no_reference", "record 0 (id 'a.jpg#0'): field 'conversations' has 3 turns"),
    ("escape", "record 0 (id 'x#0'): field 'image': image path '../a.jpg'"),
    ("bad_type", "record 0 (id 'a.jpg#0'): qa_types[0]: 'colour' is not one of"),
    ("not_a_list", "expected a JSON list"),
    ("bad_turn", "conversations[1].from must be 'gpt'"),
    ("duplicate_id", "record 1 (id 'a.jpg#0'): duplicate id (record 0 has it too)"),
    ("chunk_idx", "--shard_index must be in 0..1"),
    ("batch_size", "--batch_size must be >= 1"),
    ("invalid_json", "invalid JSON"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tiny_models, dataset, tmp_path, capsys, case, message):
    _, images, _ = dataset
    good = _record("a.jpg#0", "a.jpg", [("How many cans are there?", "Two.")])
    kwargs = {"records": [good], "images": images}
    if case == "missing_image":
        kwargs["records"] = [_record("x#0", "missing.jpg", [("How many?", "Two.")])]
    elif case == "empty_question":
        kwargs["records"] = [_record("a.jpg#0", "a.jpg", [("  ", "Two.")])]
    elif case == "not_a_list":
        kwargs["records"] = {"records": [good]}
    elif case == "no_reference":
        bad = json.loads(json.dumps(good))
        bad["conversations"].append({"from": "human", "value": "And now?"})
        kwargs["records"] = [bad]
    elif case == "escape":
        kwargs["records"] = [_record("x#0", "../a.jpg", [("How many?", "Two.")])]
    elif case == "bad_type":
        kwargs["records"] = [dict(good, qa_types=["colour"])]
    elif case == "bad_turn":
        bad = json.loads(json.dumps(good))
        bad["conversations"][1]["from"] = "human"
        kwargs["records"] = [bad]
    elif case == "duplicate_id":
        kwargs["records"] = [good, good]
    elif case == "chunk_idx":
        kwargs["extra"] = ["--num_chunks", "2", "--chunk_idx", "2"]
    elif case == "batch_size":
        kwargs["extra"] = ["--batch_size", "0"]
    elif case == "invalid_json":
        kwargs = {"raw": "[{", "images": images}
    rc, out = _bad(tiny_models, tmp_path, **kwargs)
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


# ------------------------------------------------------------------ issue 16: faults, on real processes
SCRIPT = Path(__file__).resolve().parents[1] / "vlm_inference" / "predict.py"
INTERRUPTED = "terminated (SIGTERM): finished work is saved; run the same command again to resume"


def _command(tiny_models, data, images, out, *extra):
    """predict.py run as a file, the way the README runs it."""
    return [sys.executable, str(SCRIPT), "--model_path", str(tiny_models["llava"]), "--data", str(data),
            "--image_dir", str(images), "--output_file", str(out), "--max_new_tokens", MAX_NEW, *extra]


def _wait_for(condition, what, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _count_lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_resume_keeps_a_complete_last_line_without_its_newline(full_run, dataset, tiny_models, tmp_path):
    """The line is counted as done, so it must stay: before, it was counted and then cut (6 of 7 lines)."""
    data, images, _ = dataset
    full, lines = full_run
    out = tmp_path / "predictions.jsonl"
    text = full.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(text[:2]) + text[2].rstrip("\n"), encoding="utf-8")
    done = subprocess.run(_command(tiny_models, data, images, out, "--batch_size", "2"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "4 answers written" in done.stdout and "3 already there" in done.stdout
    assert _lines(out) == lines
    assert out.read_text(encoding="utf-8") == full.read_text(encoding="utf-8")


def test_a_full_disk_is_one_line_and_the_rerun_completes(full_run, dataset, tiny_models, tmp_path):
    """ENOSPC in the middle of the second line (tests/fault_inject.py): one line, exit 1; the rerun drops the cut
    line and finishes, byte-identical to an uninterrupted run."""
    data, images, _ = dataset
    full, _ = full_run
    out = tmp_path / "predictions.jsonl"
    budget = len(full.read_text(encoding="utf-8").splitlines(keepends=True)[0]) + 20
    env = dict(os.environ, FAULT_ENOSPC_MATCH=r"predictions\.jsonl", FAULT_ENOSPC_AFTER=str(budget))
    command = _command(tiny_models, data, images, out, "--batch_size", "3")
    done = subprocess.run([sys.executable, str(SCRIPT.parents[1] / "tests" / "fault_inject.py"), *command[1:]],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: disk full") and "Traceback" not in done.stderr
    assert out.read_bytes().count(b"\n") == 1 and not out.read_bytes().endswith(b"\n")
    assert predict.main(command[2:]) == 0
    assert out.read_bytes() == full.read_bytes()


@pytest.fixture(scope="module")
def long_dataset(dataset, tmp_path_factory):
    """20 one-question records."""
    _, images, _ = dataset
    data = tmp_path_factory.mktemp("long") / "long_llava.json"
    write_json_atomic(data, [_record(f"a.jpg#{i}", "a.jpg", [(f"Question {i}: how many cans are there?", "Two.")])
                             for i in range(20)])
    return data, images, [(f"a.jpg#{i}", 0) for i in range(20)]


def _lock_holder(lock):
    try:
        return lock.read_text(encoding="utf-8")
    except OSError:
        return ""


def test_second_run_refuses_and_sigterm_keeps_finished_lines(long_dataset, tiny_models, tmp_path, capsys):
    data, images, keys = long_dataset
    out = tmp_path / "predictions.jsonl"
    lock = out.with_name(out.name + ".lock")
    command = _command(tiny_models, data, images, out, "--batch_size", "1")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # SIGSTOP freezes the first run where the test needs it, however fast or slow the machine is.
        _wait_for(lambda: _lock_holder(lock).startswith(f"pid {first.pid}") or first.poll() is not None,
                  "the first run to take the output")
        first.send_signal(signal.SIGSTOP)
        # Two identical commands: the second refuses at once, naming the first, and writes nothing.
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stdout + second.stderr
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --output_file: ") and f"pid {first.pid}" in err[0], err
        first.send_signal(signal.SIGCONT)
        _wait_for(lambda: _count_lines(out) >= 2 or first.poll() is not None, "the first run's answers")
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None and _count_lines(out) < len(keys), "the first run ended too soon"
        # SIGTERM (what SLURM and Kubernetes send): one line, exit 143, the finished answers stay.
        first.send_signal(signal.SIGTERM)
        first.send_signal(signal.SIGCONT)
        _, first_err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143
    assert first_err.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in first_err
    saved = _lines(out)
    assert 2 <= len(saved) < len(keys)
    assert [(r["id"], r["turn"]) for r in saved] == keys[:len(saved)]
    assert not lock.exists()
    before = out.read_bytes()
    # The same command again (in this process, to save a start-up) finishes the work: every question once, in order.
    assert predict.main(command[2:]) == 0
    assert f"{len(keys) - len(saved)} answers written" in capsys.readouterr().out
    assert [(r["id"], r["turn"]) for r in _lines(out)] == keys
    assert out.read_bytes().startswith(before)


def test_a_prompt_too_long_for_the_model_is_reported_and_skipped(dataset, tiny_models, tmp_path, capsys):
    _, images, _ = dataset
    huge = "Is there " + " ".join(["cat"] * 5000) + "?"  # ~5,000 tokens to a 2,048-token model
    records = [_record("a.jpg#0", "a.jpg", [("How many cans are there?", "Two."), (huge, "No.")]),
               _record("b.png#0", "b.png", [("How many objects are there?", "One.")])]
    data = tmp_path / "long_question.json"
    write_json_atomic(data, records)
    out = tmp_path / "predictions.jsonl"
    assert _run(tiny_models, data, images, out, "--batch_size", "3") == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and f"{data}: id 'a.jpg#0' turn 1: the prompt is" in skipped[0]
    assert "exceeds the model's 2048-token context" in skipped[0]
    assert "2 answers written" in captured.out and "(0 already there, 1 skipped)" in captured.out
    assert [(r["id"], r["turn"]) for r in _lines(out)] == [("a.jpg#0", 0), ("b.png#0", 0)]
    # A rerun does not ask it again: it was reported, and the answers after it are there.
    before = out.read_bytes()
    assert _run(tiny_models, data, images, out) == 0
    assert "nothing to do" in capsys.readouterr().out and out.read_bytes() == before


def test_a_nul_byte_in_an_image_path_is_one_line(dataset, tiny_models, tmp_path, capsys):
    _, images, _ = dataset
    rc, out = _bad(tiny_models, tmp_path, [_record("x#0", "a.jpg\0.png", [("How many?", "Two.")])], images)
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "record 0 (id 'x#0')" in err[0] and "NUL byte" in err[0], err
    assert "embedded null byte" not in err[0] and not out.exists()


def test_a_corrupt_image_is_reported_and_skipped(dataset, tiny_models, tmp_path, capsys):
    _, images, _ = dataset
    local = tmp_path / "images"
    shutil.copytree(images, local)
    (local / "broken.jpg").write_bytes(b"not an image at all")
    data = tmp_path / "corrupt.json"
    write_json_atomic(data, [_record("a.jpg#0", "a.jpg", [("How many cans are there?", "Two.")]),
                             _record("broken.jpg#0", "broken.jpg", [("How many?", "One.")]),
                             _record("b.png#0", "b.png", [("How many objects are there?", "One.")])])
    out = tmp_path / "predictions.jsonl"
    assert _run(tiny_models, data, local, out, "--batch_size", "3") == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert len(err) == 1 and "id 'broken.jpg#0' turn 0: image" in err[0] and "not a recognised image" in err[0]
    assert [r["id"] for r in _lines(out)] == ["a.jpg#0", "b.png#0"]


# ------------------------------------------------------------------ issue 15: a record at a time
def test_jsonl_data_gives_the_same_predictions(full_run, dataset, tiny_models, tmp_path):
    data, images, records = dataset
    jsonl = tmp_path / "test_llava.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "predictions.jsonl"
    assert _run(tiny_models, jsonl, images, out, "--batch_size", "3") == 0
    assert out.read_bytes() == full_run[0].read_bytes()


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_records_are_read_one_at_a_time(dataset, tmp_path, suffix):
    """The reader hands out record 0 before it has parsed record 1: nothing holds the whole file."""
    _, _, records = dataset
    first = json.dumps(records[0])
    path = tmp_path / f"data{suffix}"
    path.write_text(f"[{first},\n{{broken" if suffix == ".json" else f"{first}\n{{broken\n", encoding="utf-8")
    reader = predict.read_records(path)
    assert next(reader) == (0, records[0])
    with pytest.raises(predict.InputError, match="record 1|line 2"):
        next(reader)


def test_a_half_written_model_is_refused_before_anything_is_written(dataset, tiny_models, tmp_path, capsys):
    from vlm_core.model_dir import SAVING_MARKER
    data, images, _ = dataset
    model = tmp_path / "vlm_model"
    shutil.copytree(tiny_models["llava"], model)
    (model / SAVING_MARKER).write_text("train_vlm.py is moving the final model into this folder\n")
    out = tmp_path / "predictions.jsonl"
    assert predict.main(["--model_path", str(model), "--data", str(data), "--image_dir", str(images),
                         "--output_file", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is half-written" in err[0] and not out.exists()
