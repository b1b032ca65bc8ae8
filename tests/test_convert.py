"""Stage 3: convert_to_llava_format.py on hand-built annotation files: every box placeholder
(``<box:ID>``) rendered once, in the frame of the target model family."""
from __future__ import annotations

import json

import pytest

from vlm_core import families, prompts
from vlm_core.boxes import BOX_PATTERN, box_to_text, parse_box, pixel_to_square, square_offsets, text_to_box
from vlm_core.llava_format import iter_llava_records
from vlm_core.schema import render_placeholders
from vlm_training import convert_to_llava_format as convert
from vlm_training.conversion import image_records

# A wide and a tall image, so that the padded-square offsets matter on both axes.
W1, H1 = 640, 480
W2, H2 = 300, 500


def _obj(i, label, bbox):
    return {"id": i, "label": label, "bbox": bbox, "score": 0.8, "sources": ["yolo", "rtdetr"],
            "description": f"Here is a {label}."}


def _annotations() -> dict:
    # Boxes are placeholders of their objects; region questions are rebuilt from their template
    # (the labeled wording kept), a grounding answer is its object's box.
    wide = {"image": "scenes/wide.jpg", "width": W1, "height": H1, "caption": "a table",
            "objects": [_obj(0, "bottle", [10.0, 20.0, 110.0, 300.0]), _obj(3, "can", [400.5, 100.25, 630.0, 470.0])],
            "qa": [
                {"question": prompts.COUNT, "answer": prompts.count_answer(2), "type": "count", "object_ids": []},
                {"question": prompts.REGION_DESCRIPTION.format(box="<box:0>"),
                 "answer": "A green glass bottle.", "type": "region_description", "object_ids": [0]},
                {"question": prompts.REGION_DESCRIPTION_LABELED.format(label="can", box="<box:3>"),
                 "answer": "A crushed can.", "type": "region_description", "object_ids": [3]},
                {"question": prompts.GROUNDING.format(text="a crushed can"), "answer": "<box:3>",
                 "type": "grounding", "object_ids": [3]},
                {"question": prompts.REGION_LABEL.format(box="<box:0>"), "answer": "bottle",
                 "type": "region_label", "object_ids": [0]},
                {"question": prompts.RELATION.format(label_a="bottle", box_a="<box:0>",
                                                     label_b="can", box_b="<box:3>"),
                 "answer": "The bottle is to the left of the can.", "type": "relation", "object_ids": [0, 3]},
                {"question": prompts.EXISTS.format(label="glass"), "answer": "No.", "type": "exists", "object_ids": []},
            ]}
    tall = {"image": "tall.png", "width": W2, "height": H2, "caption": "",
            "objects": [_obj(0, "paper", [0.0, 0.0, 300.0, 120.0])],
            "qa": [{"question": prompts.LOCATION_BOXED.format(label="paper", box="<box:0>"),
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

    # Every Q&A pair appears exactly once, in order, each placeholder replaced by its object's box in
    # LLaVA-1.5's text (boxes.box_to_text), everything else verbatim.
    for rec, src in ((wide, data["images"][0]), (tall, data["images"][1])):
        conv = rec["conversations"]
        questions = [conv[0]["value"][len("<image>\n"):]] + [t["value"] for t in conv[2::2]]
        answers = [t["value"] for t in conv[1::2]]
        assert len(questions) == len(src["qa"])
        objects = {o["id"]: o for o in src["objects"]}

        def box(oid, src=src, objects=objects):
            return box_to_text(objects[oid]["bbox"], src["width"], src["height"])
        for q, a, qa in zip(questions, answers, src["qa"]):
            assert q == render_placeholders(qa["question"], box) and "<box:" not in q + a
            assert a == render_placeholders(qa["answer"], box)


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


def test_shuffle_turns_is_a_seeded_per_image_permutation(tmp_path):
    """predict.py asks every question as a fresh first turn: --shuffle_turns lets every type be a first turn."""
    data = _annotations()

    def convert_with(name, *extra):
        (tmp_path / name).mkdir()
        rc, out = _run(tmp_path / name, data, *extra)
        assert rc == 0
        return json.loads(out.read_text())

    def pairs(rec):
        conv = rec["conversations"]
        return [(conv[i]["value"].removeprefix("<image>\n"), conv[i + 1]["value"]) for i in range(0, len(conv), 2)]

    plain = convert_with("plain")
    first_records = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1"), ("d", "2"), ("e", "3")):
        records = convert_with(name, "--shuffle_turns", "--seed", seed)
        for mine, theirs in zip(records, plain, strict=True):
            assert sorted(pairs(mine)) == sorted(pairs(theirs))  # the same pairs, nothing lost or repeated
            type_of = dict(zip(pairs(theirs), theirs["qa_types"]))
            assert mine["qa_types"] == [type_of[pair] for pair in pairs(mine)]
            assert mine["conversations"][0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in mine["conversations"]) == 1
        first_records.append(tuple(pairs(records[0])))
    assert first_records[0] == first_records[1]  # seeded: the same order on every run
    assert len(set(first_records)) > 2 and tuple(pairs(plain[0])) not in first_records[:1]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["images"][0]["qa"][1].update(object_ids=[]), "images[0].qa[1].object_ids"),
    (lambda d: d["images"][0]["qa"][5].update(question="Where is the bottle <box:0> relative to the can <box:4>?"),
     "images[0].qa[5].question: <box:4> names no object of this image (its object ids: 0, 3)"),
    (lambda d: d["images"][0]["qa"][3].update(answer="<box:1>"), "images[0].qa[3].answer: <box:1> names no object"),
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


def test_qa_types_keeps_only_the_chosen_pairs(tmp_path, capsys):
    rc, out = _run(tmp_path, _annotations(), "--qa_types", "count", "location")
    assert rc == 0
    records = json.loads(out.read_text())
    assert [(r["image"], r["qa_types"]) for r in records] == [("scenes/wide.jpg", ["count"]), ("tall.png", ["location"])]
    printed = capsys.readouterr().out
    assert ("left out 7 Q&A pairs of other types (--qa_types): count_class 1, exists 1, grounding 1, "
            "region_description 2, region_label 1, relation 1") in printed
    assert "skipped 1 image(s) without Q&A pairs of those types" in printed
    with pytest.raises(SystemExit) as err:
        convert.parse_args(["--annotation_file", "a", "--output_file", "b", "--qa_types", "colour"])
    assert err.value.code == 2


# ----------------------------------------------------------------------------- images other trainers misread

def _misread_dataset(tmp_path):
    """An EXIF-rotated JPEG, a half-transparent PNG and a plain JPEG, annotated in displayed pixels."""
    from PIL import Image
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    # Stored 40x20 with a red top-left corner; EXIF orientation 6 = turn 90 degrees clockwise to show,
    # so it is shown 20x40 with the red corner at the top right.
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(images / "sub" / "rot.jpg", exif=exif, quality=95)
    clear = Image.new("RGBA", (20, 10), (0, 0, 0, 0))       # transparent black on the left
    clear.paste((0, 200, 0, 255), (10, 0, 20, 10))           # opaque green on the right
    clear.save(images / "t.png")
    Image.new("RGB", (30, 30), (9, 9, 9)).save(images / "plain.jpg")

    def rec(name, w, h, box):
        return {"image": name, "width": w, "height": h, "caption": "",
                "objects": [{"id": 0, "label": "mark", "bbox": box, "score": 1.0, "sources": ["labels"]}],
                "qa": [{"question": prompts.GROUNDING.format(text="the mark"), "answer": "<box:0>",
                        "type": "grounding", "object_ids": [0]}]}
    data = {"images": [rec("sub/rot.jpg", 20, 40, [10, 0, 20, 10]), rec("t.png", 20, 10, [0, 0, 10, 10]),
                       rec("plain.jpg", 30, 30, [0, 0, 5, 5])], "skipped": [], "meta": {}}
    return images, data


def test_convert_counts_the_images_other_trainers_misread(tmp_path, capsys):
    images, data = _misread_dataset(tmp_path)
    rc, out = _run(tmp_path, data, "--image_dir", str(images))
    assert rc == 0
    printed = capsys.readouterr().out
    assert ("2 of 3 images are read differently by a plain Image.open().convert('RGB') than by this toolkit: "
            "1 EXIF-rotated (e.g. sub/rot.jpg), 1 with transparent pixels (e.g. t.png)") in printed
    assert "pass --upright_images_dir DIR" in printed
    rc, _ = _run(tmp_path, {"images": [data["images"][2]], "skipped": [], "meta": {}}, "--image_dir", str(images))
    assert "all 1 images read the same with a plain Image.open().convert('RGB')" in capsys.readouterr().out
    rc, _ = _run(tmp_path, data)
    assert "images not checked for EXIF rotation or transparency" in capsys.readouterr().out


def test_upright_copies_show_other_trainers_the_pixels_the_boxes_describe(tmp_path, capsys):
    from PIL import Image

    from vlm_core.images import load_image
    images, data = _misread_dataset(tmp_path)
    upright = tmp_path / "upright"
    rc, out = _run(tmp_path, data, "--image_dir", str(images), "--upright_images_dir", str(upright))
    assert rc == 0
    assert f"upright images: 2 copies written, 1 links -> {upright}" in capsys.readouterr().out
    assert out.read_text() == _run(tmp_path, data)[1].read_text()          # the records do not change
    # A plain reader of the upright folder sees the boxes' pixels: the red corner inside the box
    # [10, 0, 20, 10] of the displayed 20x40 image; the transparent half white, the rest green.
    rot = Image.open(upright / "sub" / "rot.jpg")
    assert rot.size == (20, 40) and rot.getexif().get(0x0112) is None
    rot = rot.convert("RGB")
    assert max(abs(a - b) for a, b in zip(rot.getpixel((15, 5)), (255, 0, 0))) <= 8
    assert max(abs(a - b) for a, b in zip(rot.getpixel((5, 5)), (0, 0, 255))) <= 8
    # The original, read the plain way, has blue there: the box would point at the wrong pixels.
    plain = Image.open(images / "sub" / "rot.jpg").convert("RGB")
    assert plain.size == (40, 20) and max(abs(a - b) for a, b in zip(plain.getpixel((15, 5)), (0, 0, 255))) <= 8
    png = Image.open(upright / "t.png")
    assert png.mode == "RGB" and png.getpixel((5, 5)) == (255, 255, 255) and png.getpixel((15, 5)) == (0, 200, 0)
    assert Image.open(images / "t.png").convert("RGB").getpixel((5, 5)) == (0, 0, 0)
    assert (upright / "plain.jpg").is_symlink() and (upright / "plain.jpg").resolve() == (images / "plain.jpg").resolve()
    # The toolkit's loader reads both folders alike (JPEG re-encoding aside).
    for name in ("sub/rot.jpg", "t.png", "plain.jpg"):
        a, b = load_image(images / name), load_image(upright / name)
        assert a.size == b.size
        assert max(abs(x - y) for x, y in zip(a.getpixel((15, 5)), b.getpixel((15, 5)))) <= 8
    # Run again: the same folder, nothing left over.
    assert _run(tmp_path, data, "--image_dir", str(images), "--upright_images_dir", str(upright))[0] == 0
    assert sorted(str(p.relative_to(upright)) for p in upright.rglob("*")) == ["plain.jpg", "sub", "sub/rot.jpg", "t.png"]


def test_upright_folder_flags_are_checked(tmp_path, capsys):
    images, data = _misread_dataset(tmp_path)
    assert _run(tmp_path, data, "--upright_images_dir", str(tmp_path / "u"))[0] == 2
    assert "--upright_images_dir needs --image_dir" in capsys.readouterr().err
    assert _run(tmp_path, data, "--image_dir", str(images), "--upright_images_dir", str(images / "u"))[0] == 2
    assert "is inside --image_dir" in capsys.readouterr().err
    assert _run(tmp_path, data, "--image_dir", str(images), "--upright_images_dir", str(tmp_path))[0] == 2
    assert "holds --image_dir" in capsys.readouterr().err


def test_base_model_renders_boxes_in_its_family_frame(tmp_path, capsys):
    base = "Qwen/Qwen2.5-VL-3B-Instruct"           # known offline: the official processor settings
    frame = families.frame_for(base)
    rc, out = _run(tmp_path, _annotations(), "--base_model", base)
    assert rc == 0
    records = list(iter_llava_records(out))           # the validator accepts and checks box_frame
    wide = records[0]
    assert wide[families.FRAME_KEY] == frame.to_dict()
    assert families.frame_of_record(wide) == frame
    turns = {t: (wide["conversations"][2 * k]["value"], wide["conversations"][2 * k + 1]["value"])
             for k, t in enumerate(wide["qa_types"])}
    assert turns["grounding"][1] == frame.render_answer([400.5, 100.25, 630.0, 470.0], W1, H1, label="can")
    # Absolute pixels of the image after smart_resize: 640x480 -> 644x476 (multiples of 28), so
    # x * 644/640 and y * 476/480, rounded: [400.5, 100.25, 630, 470] -> [403, 99, 634, 466].
    assert turns["grounding"][1] == '{"bbox_2d": [403, 99, 634, 466], "label": "can"}'
    assert frame.render_box([10.0, 20.0, 110.0, 300.0], W1, H1) in turns["region_label"][0]
    # LLaVA-1.5 (the default) writes no frame key: its files stay as they were.
    rc, out = _run(tmp_path, _annotations())
    assert all(families.FRAME_KEY not in r for r in json.loads(out.read_text()))
    capsys.readouterr()
    rc, _ = _run(tmp_path, _annotations(), "--base_model", "nope/whatever")
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --base_model: cannot tell the model family") and err.count("\n") == 1


@pytest.mark.parametrize("family", sorted(families.FAMILIES))
def test_every_family_renders_each_placeholder_through_its_frame(family):
    """One annotation record, every family: each placeholder becomes the object's box as the family's
    frame writes it in a question, a grounding answer the box as it answers; LLaVA-1.5's frame is one of
    them and writes boxes.box_to_text's text; only LLaVA-1.5's records carry no frame key."""
    frame = families.frame_for_family(family)
    rec = _annotations()["images"][0]
    objects = {o["id"]: o for o in rec["objects"]}

    def box(oid):
        return frame.render_box(objects[oid]["bbox"], W1, H1)
    (out,) = image_records(rec, 0, "train.json", 0, frame=frame)
    conv = out["conversations"]
    for k, qa in enumerate(rec["qa"]):
        question, answer = conv[2 * k]["value"].removeprefix("<image>\n"), conv[2 * k + 1]["value"]
        assert question == render_placeholders(qa["question"], box)
        if qa["type"] == "grounding":
            can = objects[3]
            assert answer == frame.render_answer(can["bbox"], W1, H1, label=can["label"])
            assert frame.parse_box(answer, W1, H1) == pytest.approx(can["bbox"], abs=max(W1, H1) / 100)
        else:
            assert answer == render_placeholders(qa["answer"], box)
    relation = conv[2 * rec["qa"].index(next(q for q in rec["qa"] if q["type"] == "relation"))]["value"]
    assert relation == prompts.RELATION.format(label_a="bottle", box_a=box(0), label_b="can", box_b=box(3))
    if family == "llava":
        assert box(0) == box_to_text(objects[0]["bbox"], W1, H1) == "[0.02, 0.16, 0.17, 0.59]"
        assert families.FRAME_KEY not in out
    else:
        assert out[families.FRAME_KEY] == frame.to_dict()
        # another kind of frame, other text; ViP-LLaVA's is LLaVA-1.5's padded square, recorded as its own family
        assert (box(0) == box_to_text(objects[0]["bbox"], W1, H1)) == (frame.kind == "padded_square")


def test_numbers_in_free_text_are_text_not_boxes(tmp_path):
    """Conversion renders placeholders only: a box written as numbers (an annotation file written before
    placeholders) is never searched for and re-rendered, whatever the family."""
    data = _annotations()
    data["images"][1]["qa"][0]["question"] = "Where is the paper at [0.00, 0.00, 1.00, 0.24]?"
    for base in (families.DEFAULT_BASE_MODEL, "Qwen/Qwen3-VL-2B-Instruct"):
        rc, out = _run(tmp_path, data, "--base_model", base)
        assert rc == 0
        tall = json.loads(out.read_text())[1]
        assert tall["conversations"][0]["value"] == "<image>\nWhere is the paper at [0.00, 0.00, 1.00, 0.24]?"


def test_flag_aliases_name_the_same_files(tmp_path):
    data = _annotations()
    inp = tmp_path / "train.json"
    inp.write_text(json.dumps(data))
    args = convert.parse_args(["--annotations", str(inp), "--output_file", str(tmp_path / "o.json"),
                               "--images_dir", str(tmp_path)])
    assert (args.annotation_file, args.image_dir) == (str(inp), str(tmp_path))
    args = convert.parse_args(["--input_file", str(inp), "--output_file", str(tmp_path / "o.json")])
    assert args.annotation_file == str(inp)


def test_image_prefix_puts_paths_and_ids_under_a_folder_for_a_mix(tmp_path, capsys):
    """Two datasets converted under their own subfolders, concatenated as JSONL, read by training from one folder
    (LLaVA's mix convention): every path and id gets the folder, nothing else changes."""
    rc, plain = _run(tmp_path, _annotations())
    assert rc == 0
    inp = tmp_path / "train.json"
    mixed = tmp_path / "world.jsonl"
    assert convert.main(["--annotation_file", str(inp), "--output_file", str(mixed),
                         "--image_prefix", "world/"]) == 0
    before, after = json.loads(plain.read_text()), list(iter_llava_records(mixed))
    assert [(r["id"], r["image"]) for r in after] == [("world/scenes/wide.jpg#0", "world/scenes/wide.jpg"),
                                                      ("world/tall.png#0", "world/tall.png")]
    assert [{k: v for k, v in r.items() if k not in ("id", "image")} for r in after] == \
        [{k: v for k, v in r.items() if k not in ("id", "image")} for r in before]
    assert convert.check_image_prefix("a\\b") == "a/b" and convert.check_image_prefix("./pool") == "pool"


@pytest.mark.parametrize("extra, message", [
    (["--image_prefix", "/abs"], "--image_prefix: a folder inside train_vlm.py's --image_dir (e.g. coco), not '/abs'"),
    (["--image_prefix", "../up"], "--image_prefix: a folder inside train_vlm.py's --image_dir (e.g. coco), not '../up'"),
    (["--image_prefix", "."], "--image_prefix: a folder inside train_vlm.py's --image_dir (e.g. coco), not '.'"),
    (["--image_prefix", "p", "--llamafactory_dir", "lf"],
     "--image_prefix: --llamafactory_dir names its images by its own folder; convert for it without --image_prefix"),
])
def test_image_prefix_refuses_what_would_leave_the_folder(tmp_path, capsys, extra, message):
    rc, out = _run(tmp_path, _annotations(), *extra)
    assert rc == 2 and not out.exists()
    assert capsys.readouterr().err.strip() == f"error: {message}"
