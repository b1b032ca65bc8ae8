"""Stage 3: convert_to_llava_format.py on hand-built annotation files."""
from __future__ import annotations

import json

import pytest

from vlm_annotation import prompts
from vlm_annotation.boxes import BOX_PATTERN, parse_box, pixel_to_square, square_offsets, text_to_box
from vlm_training import convert_to_llava_format as convert

# A wide and a tall image, so that the padded-square offsets matter on both axes.
W1, H1 = 640, 480
W2, H2 = 300, 500


def _obj(i, label, bbox):
    return {"id": i, "label": label, "bbox": bbox, "score": 0.8, "sources": ["yolo", "rtdetr"],
            "description": f"Here is a {label}."}


def _annotations() -> dict:
    # Boxes in the questions are written the way a careless stage 1 might (3 decimals, image
    # frame instead of padded square): conversion must re-render them from the pixel boxes.
    wide = {"image": "scenes/wide.jpg", "width": W1, "height": H1, "caption": "a table",
            "objects": [_obj(0, "bottle", [10.0, 20.0, 110.0, 300.0]), _obj(3, "can", [400.5, 100.25, 630.0, 470.0])],
            "qa": [
                {"question": prompts.COUNT, "answer": prompts.count_answer(2), "type": "count", "object_ids": []},
                {"question": prompts.REGION_DESCRIPTION.format(box="[0.016, 0.042, 0.172, 0.625]"),
                 "answer": "A green glass bottle.", "type": "region_description", "object_ids": [0]},
                {"question": prompts.REGION_DESCRIPTION_LABELED.format(label="can", box="[0.1, 0.1, 0.2, 0.2]"),
                 "answer": "A crushed can.", "type": "region_description", "object_ids": [3]},
                {"question": prompts.GROUNDING.format(text="a crushed can"), "answer": "[0.6, 0.3, 1.0, 1.0]",
                 "type": "grounding", "object_ids": [3]},
                {"question": prompts.REGION_LABEL.format(box="[0, 0, 1, 1]"), "answer": "bottle",
                 "type": "region_label", "object_ids": [0]},
                {"question": prompts.RELATION.format(label_a="bottle", box_a="[0.0, 0.0, 0.1, 0.1]",
                                                     label_b="can", box_b="[0.5, 0.5, 0.9, 0.9]"),
                 "answer": "The bottle is to the left of the can.", "type": "relation", "object_ids": [0, 3]},
                {"question": prompts.EXISTS.format(label="glass"), "answer": "No.", "type": "exists", "object_ids": []},
            ]}
    tall = {"image": "tall.png", "width": W2, "height": H2, "caption": "",
            "objects": [_obj(0, "paper", [0.0, 0.0, 300.0, 120.0])],
            "qa": [{"question": prompts.LOCATION_BOXED.format(label="paper", box="[0.00, 0.00, 1.00, 0.24]"),
                    "answer": "At the top.", "type": "location", "object_ids": [0]},
                   {"question": prompts.COUNT_CLASS.format(plural=prompts.plural("paper")),
                    "answer": prompts.count_answer(1, "paper"), "type": "count_class", "object_ids": []}]}
    empty = {"image": "empty.jpg", "width": 50, "height": 50, "caption": "", "objects": [], "qa": []}
    return {"images": [wide, tall, empty], "skipped": [], "meta": {}}


def _run(tmp_path, data, *extra):
    inp = tmp_path / "train.json"
    inp.write_text(json.dumps(data))
    out = tmp_path / "train_llava.json"
    rc = convert.main(["--annotation_file", str(inp), "--output_file", str(out), *extra])
    return rc, out


def _within_rounding(text_box_px, true_px, width, height):
    # Two decimals of the padded square: each coordinate is off by at most half a step.
    side = square_offsets(width, height)[0]
    return all(abs(a - b) <= 0.005 * side + 1e-6 for a, b in zip(text_box_px, true_px))


def test_records_follow_the_llava_contract(tmp_path, capsys):
    data = _annotations()
    rc, out = _run(tmp_path, data)
    assert rc == 0
    records = json.loads(out.read_text())
    assert [r["id"] for r in records] == ["scenes/wide.jpg#0", "tall.png#0"]
    assert "skipped 1 image(s) without Q&A pairs" in capsys.readouterr().out
    for rec in records:
        conv = rec["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        text = "".join(t["value"] for t in conv)
        assert text.count("<image>") == 1 and conv[0]["value"].startswith("<image>\n")
        assert len(rec["qa_types"]) == len(conv) // 2
    wide, tall = records
    assert (wide["image"], wide["width"], wide["height"]) == ("scenes/wide.jpg", W1, H1)
    assert wide["qa_types"] == [qa["type"] for qa in data["images"][0]["qa"]]

    # Every Q&A pair appears exactly once, in order (region questions and grounding answers
    # with the box re-rendered, everything else verbatim).
    for rec, src in ((wide, data["images"][0]), (tall, data["images"][1])):
        conv = rec["conversations"]
        questions = [conv[0]["value"][len("<image>\n"):]] + [t["value"] for t in conv[2::2]]
        answers = [t["value"] for t in conv[1::2]]
        assert len(questions) == len(src["qa"])
        for q, a, qa in zip(questions, answers, src["qa"]):
            strip = lambda s: BOX_PATTERN.sub("[]", s)  # noqa: E731
            assert strip(q) == strip(qa["question"])
            if qa["type"] != "grounding":
                assert strip(a) == strip(qa["answer"])


def test_every_box_in_the_text_parses_back_to_the_annotation_box(tmp_path):
    data = _annotations()
    _, out = _run(tmp_path, data)
    records = {r["image"]: r for r in json.loads(out.read_text())}
    n_checked = 0
    for src in data["images"][:2]:
        rec = records[src["image"]]
        objects = {o["id"]: o for o in src["objects"]}
        conv = rec["conversations"]
        for k, qa in enumerate(src["qa"]):
            q, a = conv[2 * k]["value"], conv[2 * k + 1]["value"]
            boxes_in_text = [m.group(0) for m in BOX_PATTERN.finditer(q)] + \
                            [m.group(0) for m in BOX_PATTERN.finditer(a)]
            assert len(boxes_in_text) == len(qa["object_ids"])
            for box_text, oid in zip(boxes_in_text, qa["object_ids"]):
                assert box_text == "[" + ", ".join(f"{v:.2f}" for v in parse_box(box_text)) + "]"
                px = text_to_box(box_text, src["width"], src["height"])
                assert _within_rounding(px, objects[oid]["bbox"], src["width"], src["height"]), (box_text, oid)
                n_checked += 1
    assert n_checked == 7


def test_region_questions_use_the_shared_wording(tmp_path):
    _, out = _run(tmp_path, _annotations())
    wide = json.loads(out.read_text())[0]["conversations"]
    # bottle [10, 20, 110, 300] in 640x480: square side 640, dy = 80.
    assert pixel_to_square([10, 20, 110, 300], W1, H1) == pytest.approx([10 / 640, 100 / 640, 110 / 640, 380 / 640])
    assert wide[2]["value"] == "Please provide a short description for this region: [0.02, 0.16, 0.17, 0.59]"
    assert wide[4]["value"].startswith("Please provide a short description for this can: [")
    assert wide[7]["value"] == "[0.63, 0.28, 0.98, 0.86]"       # grounding answer: the can's box
    assert wide[8]["value"] == "What is the object in this region: [0.02, 0.16, 0.17, 0.59]? Answer with one word."


def test_max_turns_spills_into_further_records_of_the_same_image(tmp_path):
    data = _annotations()
    rc, out = _run(tmp_path, data, "--max_turns", "3")
    assert rc == 0
    records = json.loads(out.read_text())
    assert [r["id"] for r in records] == ["scenes/wide.jpg#0", "scenes/wide.jpg#1", "scenes/wide.jpg#2", "tall.png#0"]
    assert [len(r["qa_types"]) for r in records] == [3, 3, 1, 2]
    for rec in records:
        conv = rec["conversations"]
        assert conv[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in conv) == 1
    types = sum((r["qa_types"] for r in records[:3]), [])
    assert types == [qa["type"] for qa in data["images"][0]["qa"]]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["images"][0]["qa"][1].update(object_ids=[]), "images[0].qa[1].object_ids"),
    (lambda d: d["images"][0]["qa"][5].update(object_ids=[0]), "images[0].qa[5].question: has 2 box(es)"),
    (lambda d: d["images"][0]["qa"][0].update(question="<image>\nHow many?"), "images[0].qa[0].question"),
    (lambda d: d["images"][0]["objects"][0].update(bbox=[10, 20, 5, 300]), "images[0].objects[0].bbox"),
    (lambda d: d["images"][1]["qa"][0].update(type="colour"), "images[1].qa[0].type"),
    (lambda d: d["images"][1]["qa"][0].update(object_ids=[9]), "images[1].qa[0].object_ids[0]"),
])
def test_malformed_annotations_exit_2_and_write_nothing(tmp_path, capsys, mutate, message):
    data = _annotations()
    mutate(data)
    rc, out = _run(tmp_path, data)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "train.json" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_or_invalid_json_exit_2(tmp_path, capsys):
    out = tmp_path / "o.json"
    assert convert.main(["--annotation_file", str(tmp_path / "nope.json"), "--output_file", str(out)]) == 2
    assert "nope.json: file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    assert convert.main(["--annotation_file", str(bad), "--output_file", str(out)]) == 2
    assert "bad.json: invalid JSON" in capsys.readouterr().err
    assert convert.main(["--annotation_file", str(bad), "--output_file", str(out), "--max_turns", "-1"]) == 2
    assert "--max_turns" in capsys.readouterr().err
    assert not out.exists()


def test_script_runs_from_the_command_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    inp = tmp_path / "a.json"
    inp.write_text(json.dumps(_annotations()))
    repo = Path(convert.__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, str(repo / "vlm_training" / "convert_to_llava_format.py"),
                          "--annotation_file", str(inp), "--output_file", str(tmp_path / "o.json")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "wrote 2 records (2 images, 9 Q&A turns)" in res.stdout
