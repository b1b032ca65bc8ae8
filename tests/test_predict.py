"""predict.py on the tiny LLaVA: one line per question, resumable without duplicates, shardable, bad input."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from vlm_annotation.io_utils import write_json_atomic
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
    assert "questions that are not in --data" in capsys.readouterr().err


def test_shards_cover_every_question_once(full_run, dataset, tiny_models, tmp_path):
    data, images, _ = dataset
    _, lines = full_run
    shards = []
    for k in range(3):
        out = tmp_path / f"pred_{k}.jsonl"
        assert _run(tiny_models, data, images, out, "--num_chunks", "3", "--chunk_idx", str(k)) == 0
        shards.append(_lines(out) if out.exists() else [])
    ids = [{r["id"] for r in shard} for shard in shards]
    assert [len(s) for s in ids] == [1, 2, 2]  # records 0 | 1-2 | 3-4
    assert sum(shards, []) == lines


def test_get_chunk_is_contiguous_and_complete():
    items = list(range(10))
    chunks = [predict.get_chunk(items, 4, k) for k in range(4)]
    assert chunks == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
    assert [predict.get_chunk(items[:2], 3, k) for k in range(3)] == [[], [0], [1]]


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
    ("escape", "image path '../a.jpg' escapes --image_dir"),
    ("bad_type", "record 0 (id 'a.jpg#0'): qa_types[0]: 'colour' is not one of"),
    ("not_a_list", "expected a JSON list"),
    ("bad_turn", "conversations[1].from must be 'gpt'"),
    ("duplicate_id", "[1].id: duplicate of [0].id"),
    ("chunk_idx", "--chunk_idx must be in 0..1"),
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
