"""Issue 26: a wrong box frame is caught where users make it. The share of grounding answers with no box or
with a box outside the image, per family (vlm_core/frame_check.py), in predict.py's summary line and in
evaluate.py's metrics.json, with a one-line warning above 5%."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from vlm_core import families as F
from vlm_core.boxes import first_box
from vlm_core.frame_check import FrameCheck, box_outside, check_grounding, displayed_size, frame_fields
from vlm_core.io_utils import write_json_atomic
from vlm_inference import evaluate, predict

LLAVA = F.frame_for_family("llava")
QWEN25 = F.frame_for_family("qwen2_5_vl")
QWEN3 = F.frame_for_family("qwen3_vl")
NEXT = F.frame_for_family("llava_next")

# Hand-made grounding answers, each with what it is: ok (a box inside the image), none (no box), out.
# LLaVA-1.5 on a 200x100 image: side 200, the image is y 0.25..0.75 of the square.
LLAVA_ANSWERS = [("[0.10, 0.30, 0.50, 0.70]", "ok"), ("[0.00, 0.25, 1.00, 0.75]", "ok"),
                 ("[0.10, 0.00, 0.50, 0.20]", "out"),          # in the padding: a 0..1-of-the-image answer
                 ("the can is on the left", "none"), ("[0.50, 0.30, 0.10, 0.70]", "none")]  # inverted
# Qwen2.5-VL on a 300x200 image: smart_resize -> 308x196, pixels 0..307 x 0..195.
QWEN25_ANSWERS = [('{"bbox_2d": [10, 10, 100, 100], "label": "can"}', "ok"),
                  ("[0, 0, 308, 196]", "ok"),                  # one step over the last pixel: rounding
                  ('{"bbox_2d": [500, 400, 900, 800]}', "out"),  # 0..1000 numbers: Qwen3-VL's frame
                  ("[0, 0, 309, 100]", "out"), ("[-2, 0, 10, 10]", "out"),
                  ("<|box_start|>(10,20),(30,40)<|box_end|>", "ok"), ("", "none")]
# Qwen3-VL 0..1000: any image size.
QWEN3_ANSWERS = [('{"bbox_2d": [0, 0, 1000, 1000]}', "ok"), ('{"bbox_2d": [0, 0, 1002, 10]}', "out")]


def _items():
    return ([(a, LLAVA, 200, 100) for a, _ in LLAVA_ANSWERS] + [(a, QWEN25, 300, 200) for a, _ in QWEN25_ANSWERS]
            + [(a, QWEN3, 64, 48) for a, _ in QWEN3_ANSWERS])


def test_image_bounds_of_every_frame():
    assert LLAVA.image_bounds(200, 100) == [0.0, 0.25, 1.0, 0.75]
    assert F.frame_for_family("vip_llava").image_bounds(100, 200) == [0.25, 0.0, 0.75, 1.0]
    assert NEXT.image_bounds(200, 100) == [0.0, 0.0, 1.0, 1.0]
    assert QWEN3.image_bounds(200, 100) == [0.0, 0.0, 1000.0, 1000.0]
    assert QWEN25.image_bounds(300, 200) == [0.0, 0.0, 307.0, 195.0]
    assert (LLAVA.step, NEXT.step, QWEN25.step, QWEN3.step) == (0.01, 0.01, 1.0, 1.0)
    # Everything a frame writes for a box of the image lies within its bounds.
    for name in F.FAMILIES:
        frame = F.frame_for_family(name)
        for w, h in [(200, 100), (2000, 50), (50, 2000), (1, 1)]:
            for box in ([0, 0, w, h], [0, 0, 1, 1], [w - 1, h - 1, w, h], [-1, -1, w + 1, h + 1]):
                assert not box_outside(first_box(frame.render_answer(box, w, h)), frame, w, h), (name, w, h, box)


def test_box_outside_allows_one_rounding_step_only():
    assert not box_outside([0, 0.24, 1, 0.76], LLAVA, 200, 100)
    assert box_outside([0, 0.23, 1, 0.75], LLAVA, 200, 100)
    assert box_outside([0, 0.25, 1.02, 0.75], LLAVA, 200, 100)
    assert not box_outside([0, 0, 1001, 1001], QWEN3, 5, 5) and box_outside([0, 0, 1002, 5], QWEN3, 5, 5)
    assert box_outside([0, 0, 2, 1.1], NEXT, 5, 5)


def test_shares_per_family_are_exact():
    result = check_grounding(_items())
    assert result == {
        "n": 14, "unparsed": 3, "outside": 5, "checked": 11, "unparsed_share": 3 / 14, "outside_share": 5 / 11,
        "per_family": {
            "llava": {"n": 5, "unparsed": 2, "outside": 1, "checked": 3, "unparsed_share": 0.4,
                      "outside_share": 1 / 3},
            "qwen2_5_vl": {"n": 7, "unparsed": 1, "outside": 3, "checked": 6, "unparsed_share": 1 / 7,
                           "outside_share": 0.5},
            "qwen3_vl": {"n": 2, "unparsed": 0, "outside": 1, "checked": 2, "unparsed_share": 0.0,
                         "outside_share": 0.5},
        }}
    # The hand labels say the same.
    labels = [k for _, k in LLAVA_ANSWERS + QWEN25_ANSWERS + QWEN3_ANSWERS]
    assert (labels.count("none"), labels.count("out")) == (3, 5)


def test_answers_without_a_frame_count_no_box_only():
    check = FrameCheck()
    check.add("[0.1, 0.2, 0.3, 0.4]", None)
    check.add("[5, 5, 2000, 2000]", None)
    check.add("no idea", None)
    assert check.result()["per_family"] == {"unknown": {"n": 3, "unparsed": 1, "outside": 0, "checked": 0,
                                                        "unparsed_share": 1 / 3, "outside_share": None}}
    assert check.summary() == "grounding: 1 of 3 no box (33%)"


def test_warnings_name_the_family_above_five_percent_only():
    check = FrameCheck()
    for answer, frame, w, h in _items():
        check.add(answer, frame, w, h)
    for _ in range(20):  # 20 good answers: qwen3_vl 1 outside of 22 = 4.5%, not warned
        check.add("[1, 1, 2, 2]", QWEN3, 64, 48)
    assert check.warnings("predict") == [
        "predict: warning: llava grounding answers: 2 of 5 have no box (40%), 1 of 3 fall outside the image (33%); "
        "is the model asked in the frame it was trained in (docs/families.md)?",
        "predict: warning: qwen2_5_vl grounding answers: 1 of 7 have no box (14%), 3 of 6 fall outside the image "
        "(50%); is the model asked in the frame it was trained in (docs/families.md)?"]
    assert check.summary() == "grounding: 3 of 34 no box (9%), 5 of 31 outside the image (16%)"
    assert FrameCheck().summary() == "" and FrameCheck().warnings("x") == []


def test_displayed_size_follows_the_exif_rotation(tmp_path):
    upright = tmp_path / "upright.jpg"
    Image.new("RGB", (40, 20)).save(upright)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (40, 20)).save(rotated, exif=exif)
    assert displayed_size(upright) == (40, 20) and displayed_size(rotated) == (20, 40)


# --------------------------------------------------------------------------- evaluate.py
def _prediction(i, answer, frame, w, h):
    return {"id": f"img{i}.jpg#0", "image": f"img{i}.jpg", "turn": 0, "question": f"Where is {i}?",
            "answer": answer, "reference": frame.render_answer([0, 0, w / 2, h / 2], w, h), "type": "grounding",
            **frame_fields(frame, w, h)}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_evaluate_writes_the_shares_and_warns(tmp_path, capsys):
    records = [_prediction(i, a, f, w, h) for i, (a, f, w, h) in enumerate(_items())]
    records.append({"id": "x.jpg#0", "image": "x.jpg", "turn": 0, "question": "How many?", "answer": "2",
                    "reference": "2", "type": "count"})  # not grounding: not counted
    preds = _write(tmp_path / "predictions.jsonl", records)
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--predictions", str(preds), "--output_file", str(out)]) == 0
    metrics = json.loads(out.read_text(encoding="utf-8"))
    assert metrics["grounding"] == check_grounding(_items())
    assert metrics["grounding"]["unparsed_share"] == 3 / 14 and metrics["grounding"]["outside_share"] == 5 / 11
    captured = capsys.readouterr()
    assert "grounding: 3 of 14 no box (21%), 5 of 11 outside the image (45%)" in captured.out
    warned = captured.err.strip().splitlines()
    assert [line.split(" grounding answers")[0] for line in warned] == [
        "evaluate: warning: llava", "evaluate: warning: qwen2_5_vl", "evaluate: warning: qwen3_vl"]


def test_evaluate_without_grounding_answers_adds_nothing(tmp_path, capsys):
    preds = _write(tmp_path / "p.jsonl", [{"answer": "2", "reference": "2", "type": "count"}])
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--predictions", str(preds), "--output_file", str(out)]) == 0
    assert "grounding" not in json.loads(out.read_text(encoding="utf-8"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("change,message", [
    ({"image_size": [0, 10]}, "line 1: image_size: expected [width, height], two positive integers, got [0, 10]"),
    ({"image_size": "64x48"}, "line 1: image_size: expected [width, height]"),
    ({"box_frame": {"family": "qwen9_vl", "kind": "norm1000"}}, "line 1: box_frame: unknown model family 'qwen9_vl'"),
    ({"box_frame": None}, "line 1: box_frame: must be an object, got NoneType"),
])
def test_evaluate_refuses_a_malformed_frame_field_in_one_line(tmp_path, capsys, change, message):
    rec = {**_prediction(0, "[1, 2, 3, 4]", QWEN3, 64, 48), **change}
    preds = _write(tmp_path / "p.jsonl", [rec])
    assert evaluate.main(["--predictions", str(preds), "--output_file", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{preds}: {message}" in err[0], err
    assert not (tmp_path / "m.json").exists()


# --------------------------------------------------------------------------- predict.py, end to end
def test_predict_records_the_frame_and_reports_the_shares(tiny_models, tmp_path, capsys):
    """The tiny LLaVA answers two grounding questions on a 64x48 image: each grounding line carries the frame
    and the image size, the summary line gives the shares of those answers, evaluate.py finds the same."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(images / "a.jpg")
    conv = []
    for k, text in enumerate(["Where is the can?", "Where is the glass?"]):
        conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + f"Give the box of: {text}"},
                 {"from": "gpt", "value": LLAVA.render_answer([4, 4, 40, 30], 64, 48)}]
    conv += [{"from": "human", "value": "How many cans are there?"}, {"from": "gpt", "value": "2"}]
    data = tmp_path / "test_llava.json"
    write_json_atomic(data, [{"id": "a.jpg#0", "image": "a.jpg", "width": 64, "height": 48, "conversations": conv,
                              "qa_types": ["grounding", "grounding", "count"]}])
    out = tmp_path / "predictions.jsonl"
    capsys.readouterr()
    assert predict.main(["--model_path", str(tiny_models["llava"]), "--data", str(data), "--image_dir", str(images),
                         "--output_file", str(out), "--max_new_tokens", "8"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["type"] for r in lines] == ["grounding", "grounding", "count"]
    for r in lines[:2]:
        assert r["box_frame"] == F.frame_for(tiny_models["llava"]).to_dict() == LLAVA.to_dict()
        assert r["image_size"] == [64, 48]
    assert "box_frame" not in lines[2] and "image_size" not in lines[2]
    expected = FrameCheck()
    for r in lines[:2]:
        expected.add(r["answer"], LLAVA, 64, 48)
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith("predict: 3 answers written") and summary.endswith("; " + expected.summary())
    assert [line for line in captured.err.splitlines() if "warning: llava" in line] == expected.warnings("predict")
    # evaluate.py reads the same numbers back from the file.
    assert evaluate.main(["--predictions", str(out), "--output_file", str(tmp_path / "metrics.json")]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["grounding"] == expected.result() and metrics["grounding"]["n"] == 2
