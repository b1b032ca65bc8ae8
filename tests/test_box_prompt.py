"""Visual box prompts (issue 24): the box drawn on the image, named by its colour in the question.

One function draws (vlm_core/images.py); convert writes what to draw into each record; training draws it
before the family prepares the image, exactly as inference does; prompt_format.json tells inference to
ask that way; and a tiny LLaVA trained on visual prompts tells two boxes on one image apart by the
drawn box alone (the question is the same for both).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vlm_core import prompts
from vlm_core.images import BOX_PROMPT_COLOURS, BOX_PROMPT_SLOTS, box_prompt_line_width, draw_box_prompt
from vlm_core.io_utils import InputError
from vlm_core.llava_format import iter_llava_records
from vlm_core.prompts import PROMPT_FORMAT_FILE, PromptFormat
from vlm_inference import predict
from vlm_inference import vlm_inference as vi
from vlm_inference.vlm_inference import BoxPromptWarning, VLMInference
from vlm_training import convert_to_llava_format as convert
from vlm_training import train_vlm

RED, GREEN = BOX_PROMPT_COLOURS["red"], BOX_PROMPT_COLOURS["green"]


# ------------------------------------------------------------------ drawing
def test_outline_has_the_colour_and_the_inside_is_untouched():
    image = Image.new("RGB", (12, 10), (0, 0, 0))
    drawn = draw_box_prompt(image, [{"bbox": [2, 1, 9, 8], "colour": "red"}])
    assert image.getpixel((5, 4)) == (0, 0, 0) and np.asarray(image).max() == 0   # the original is left alone
    mask = (np.asarray(drawn) == RED).all(axis=2).astype(int)
    # Columns 2..8 and rows 1..7 (x2, y2 are the far edges), the outline 2 pixels wide, drawn inwards.
    assert mask.tolist() == [
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
    # everything but the outline is the original
    assert (np.asarray(drawn)[mask == 0] == 0).all()


def test_line_width_scales_with_the_shorter_side():
    assert [box_prompt_line_width(w, h) for w, h in ((12, 10), (640, 120), (640, 480), (1920, 1080))] == \
        [2, 2, 5, 11]
    image = Image.new("RGB", (640, 480), (10, 20, 30))
    drawn = np.asarray(draw_box_prompt(image, [{"bbox": [100.4, 50.6, 300, 200], "colour": "green"}]))
    row = (drawn[120] == GREEN).all(axis=1)        # a row through the middle of the box
    assert np.flatnonzero(row).tolist() == [100, 101, 102, 103, 104, 295, 296, 297, 298, 299]
    column = (drawn[:, 200] == GREEN).all(axis=1)  # y1 50.6 rounds to 51
    assert np.flatnonzero(column).tolist() == [51, 52, 53, 54, 55, 195, 196, 197, 198, 199]
    assert tuple(drawn[120, 200]) == (10, 20, 30)


def test_slots_have_fixed_distinct_colours_and_boxes_are_clipped():
    assert BOX_PROMPT_SLOTS[:3] == ("red", "green", "blue")
    assert len(set(BOX_PROMPT_COLOURS.values())) == len(BOX_PROMPT_COLOURS)
    image = Image.new("RGB", (20, 20), (0, 0, 0))
    drawn = np.asarray(draw_box_prompt(image, [{"bbox": [-5, 10, 30, 25], "colour": "red"},
                                               {"bbox": [2, 2, 8, 8], "colour": "blue"}]))
    assert (drawn[10:, 0] == RED).all() and (drawn[10:, 19] == RED).all() and (drawn[19, :] == RED).all()
    assert (drawn[2, 2:8] == BOX_PROMPT_COLOURS["blue"]).all() and tuple(drawn[5, 5]) == (0, 0, 0)


# ------------------------------------------------------------------ convert
def _obj(i, label, bbox, description):
    return {"id": i, "label": label, "bbox": bbox, "score": 1.0, "sources": ["labels"], "description": description}


def _qa(question, answer, qtype, ids):
    return {"question": question, "answer": answer, "type": qtype, "object_ids": ids}


def _annotations() -> dict:
    """Two images; the first has a glass and a bottle, with every kind of question about them."""
    two = {"image": "scenes/two.png", "width": 64, "height": 64, "caption": "",
           "objects": [_obj(0, "glass", [4, 6, 28, 30], "a yellow glass on the table"),
                       _obj(1, "bottle", [34, 30, 60, 58], "a blue bottle on the grass")],
           "qa": [_qa(prompts.COUNT, prompts.count_answer(2), "count", [0, 1]),
                  _qa(prompts.REGION_DESCRIPTION.format(box="<box:0>"), "a yellow glass on the table",
                      "region_description", [0]),
                  _qa(prompts.REGION_DESCRIPTION.format(box="<box:1>"), "a blue bottle on the grass",
                      "region_description", [1]),
                  _qa(prompts.REGION_LABEL.format(box="<box:1>"), "bottle", "region_label", [1]),
                  _qa(prompts.GROUNDING.format(text="the glass"), "<box:0>", "grounding", [0]),
                  _qa(prompts.RELATION.format(label_a="bottle", box_a="<box:1>", label_b="glass", box_b="<box:0>"),
                      "The bottle is to the right of the glass.", "relation", [1, 0]),
                  _qa(prompts.SURFACE_BOXED.format(label="glass", box="<box:0>"), "table", "surface", [0]),
                  _qa("Is <box:1> full?", "No.", "exists", [1])]}
    one = {"image": "scenes/one.png", "width": 48, "height": 32, "caption": "",
           "objects": [_obj(0, "glass", [8, 4, 40, 28], "a red glass on the sand")],
           "qa": [_qa(prompts.REGION_DESCRIPTION_LABELED.format(label="glass", box="<box:0>"),
                      "a red glass on the sand", "region_description", [0]),
                  _qa(prompts.LOCATION_BOXED.format(label="glass", box="<box:0>"), "The glass is in the middle.",
                      "location", [0])]}
    return {"images": [two, one], "skipped": [], "meta": {}}


def _convert(tmp_path, *extra, name="llava.json"):
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(_annotations()))
    out = tmp_path / name
    assert convert.main(["--annotation_file", str(ann), "--output_file", str(out), *extra]) == 0
    return out


# The sha256 of what convert wrote for _annotations() before --box_prompt existed (the code of the commit
# before it, run on this file): text prompts are byte for byte what they were.
TEXT_OUTPUT_SHA256 = {"llava.json": "535775fbcf9649c120b20d52dec89c9665206c3b0fe3311a7fe4059ccd03b58d",
                      "llava.jsonl": "35c47248d5b5bdc4dff01b9c67d97ecacb7aa01bf9a8e509dfb58d04a1d5d26e"}


def test_text_box_prompts_are_byte_identical_to_the_output_before_the_flag(tmp_path):
    for name, extra in (("llava.json", []), ("llava.jsonl", ["--max_turns", "2", "--shuffle_turns"])):
        default = _convert(tmp_path, *extra, name=name).read_bytes()
        text = _convert(tmp_path, *extra, "--box_prompt", "text", name=name).read_bytes()
        assert text == default and b"box_prompt" not in text
        assert hashlib.sha256(text).hexdigest() == TEXT_OUTPUT_SHA256[name]


def _turns(record):
    conv = record["conversations"]
    return [(conv[k]["value"].removeprefix("<image>\n"), conv[k + 1]["value"]) for k in range(0, len(conv), 2)]


def test_visual_records_name_their_boxes_by_colour_and_carry_them(tmp_path):
    records = list(iter_llava_records(_convert(tmp_path, "--box_prompt", "visual")))
    glass, bottle = [4, 6, 28, 30], [34, 30, 60, 58]
    # One record per set of drawn boxes, in the order each set first comes; the image-level pairs draw nothing.
    assert [(r["id"], r["qa_types"], r["box_prompt"]) for r in records] == [
        ("scenes/two.png#0", ["count", "grounding"], {"mode": "visual", "boxes": []}),
        ("scenes/two.png#1", ["region_description", "surface"],
         {"mode": "visual", "boxes": [{"bbox": glass, "colour": "red"}]}),
        ("scenes/two.png#2", ["region_description", "region_label", "exists"],
         {"mode": "visual", "boxes": [{"bbox": bottle, "colour": "red"}]}),
        ("scenes/two.png#3", ["relation"],
         {"mode": "visual", "boxes": [{"bbox": bottle, "colour": "red"}, {"bbox": glass, "colour": "green"}]}),
        ("scenes/one.png#0", ["region_description", "location"],
         {"mode": "visual", "boxes": [{"bbox": [8, 4, 40, 28], "colour": "red"}]}),
    ]
    assert _turns(records[0]) == [(prompts.COUNT, "There are 2 objects in this image."),
                                  (prompts.GROUNDING.format(text="the glass"), "[0.06, 0.09, 0.44, 0.47]")]
    assert _turns(records[1]) == [("Please provide a short description for the object in the red box.",
                                   "a yellow glass on the table"),
                                  ("What is the glass in the red box lying on?", "table")]
    assert _turns(records[2]) == [("Please provide a short description for the object in the red box.",
                                   "a blue bottle on the grass"),
                                  ("What is the object in the red box? Answer with one word.", "bottle"),
                                  ("Is the red box full?", "No.")]   # another wording: the placeholder named
    assert _turns(records[3]) == [("Where is the bottle in the red box relative to the glass in the green box?",
                                   "The bottle is to the right of the glass.")]
    assert _turns(records[4]) == [("Please provide a short description for the glass in the red box.",
                                   "a red glass on the sand"),
                                  ("Where is the glass in the red box?", "The glass is in the middle.")]


def test_both_keeps_the_coordinates_after_the_colour(tmp_path):
    records = list(iter_llava_records(_convert(tmp_path, "--box_prompt", "both", "--max_turns", "1")))
    questions = {r["id"]: _turns(r)[0][0] for r in records}
    assert questions["scenes/two.png#2"] == \
        "Please provide a short description for the object in the red box [0.06, 0.09, 0.44, 0.47]."
    assert questions["scenes/two.png#7"] == ("Where is the bottle in the red box [0.53, 0.47, 0.94, 0.91] relative "
                                             "to the glass in the green box [0.06, 0.09, 0.44, 0.47]?")
    assert all(r["box_prompt"]["mode"] == "both" for r in records)
    # --max_turns splits each group; every record of a group carries its boxes
    assert [len(r["box_prompt"]["boxes"]) for r in records] == [0, 0, 1, 1, 1, 1, 1, 2, 1, 1]


@pytest.mark.parametrize("value, message", [
    ("red", "field 'box_prompt': expected an object with 'mode' and 'boxes'"),
    ({"mode": "text", "boxes": []}, "field 'box_prompt': mode must be one of visual, both"),
    ({"mode": "visual", "boxes": [{"bbox": [5, 5, 1, 9], "colour": "red"}]}, r"boxes\[0\].bbox must be"),
    ({"mode": "visual", "boxes": [{"bbox": [1, 1, 5, 9], "colour": "pink"}]}, r"boxes\[0\].colour must be one of"),
])
def test_a_bad_box_prompt_field_is_one_line_naming_file_and_field(tmp_path, value, message):
    records = list(iter_llava_records(_convert(tmp_path, "--box_prompt", "visual")))
    records[1]["box_prompt"] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(InputError, match=message) as err:
        list(iter_llava_records(bad))
    assert str(err.value).startswith(f"{bad}: record 1 (id 'scenes/two.png#1'): ") and "\n" not in str(err.value)


def test_prompt_format_saves_box_prompt_only_when_it_is_not_text(tmp_path):
    PromptFormat().save(tmp_path)
    assert "box_prompt" not in json.loads((tmp_path / PROMPT_FORMAT_FILE).read_text())
    visual = PromptFormat().with_box_prompt("visual")
    visual.save(tmp_path)
    saved = json.loads((tmp_path / PROMPT_FORMAT_FILE).read_text())
    assert saved["box_prompt"] == "visual"
    assert saved["templates"]["region_description_visual"] == prompts.REGION_DESCRIPTION_VISUAL
    assert PromptFormat.load(tmp_path) == visual
    with pytest.raises(ValueError, match="box_prompt must be one of text, visual, both"):
        PromptFormat.from_dict({**saved, "box_prompt": "drawn"})


# ------------------------------------------------------------------ train, infer
GLASS, BOTTLE = [4, 6, 28, 30], [34, 30, 60, 58]


def _write_images(image_dir):
    (image_dir / "scenes").mkdir(parents=True)
    two = Image.new("RGB", (64, 64), (40, 140, 60))
    draw = ImageDraw.Draw(two)
    draw.rectangle([8, 10, 24, 26], fill=(240, 220, 40))
    draw.rectangle([38, 34, 56, 54], fill=(30, 60, 210))
    two.save(image_dir / "scenes/two.png")
    one = Image.new("RGB", (48, 32), (220, 200, 150))
    ImageDraw.Draw(one).ellipse([12, 6, 36, 26], fill=(200, 30, 30))
    one.save(image_dir / "scenes/one.png")
    return image_dir


def _train_args(data, images, out, base, box_prompt="visual"):
    return ["--train_data", str(data), "--image_dir", str(images), "--output_dir", str(out), "--base_model",
            str(base), "--use_lora", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0",
            "--learning_rate", "5e-3", "--max_steps", "100", "--batch_size", "10", "--warmup_ratio", "0",
            "--save_steps", "0", "--logging_steps", "50", "--seed", "0", "--box_prompt", box_prompt]


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """The tiny LLaVA trained with --box_prompt visual on convert's visual records (one question each: predict asks
    every question as a first turn) until it repeats them."""
    d = tmp_path_factory.mktemp("box_prompt")
    images = _write_images(d / "images")
    data = _convert(d, "--box_prompt", "visual", "--max_turns", "1")
    out = d / "model"
    assert train_vlm.main(_train_args(data, images, out, tiny_models["llava"])) == 0
    return {"dir": d, "images": images, "data": data, "model": out, "records": list(iter_llava_records(data))}


def test_training_saves_box_prompt_and_inference_asks_that_way_without_a_flag(trained):
    saved = json.loads((trained["model"] / PROMPT_FORMAT_FILE).read_text())
    assert saved["box_prompt"] == "visual"
    assert json.loads((trained["model"] / "train_args.json").read_text())["box_prompt"] == "visual"
    vlm = VLMInference(trained["model"])
    assert vlm.prompt_format.box_prompt == "visual"
    assert vlm.region_question(GLASS, 64, 64) == "Please provide a short description for the object in the red box."
    assert vlm.region_question(GLASS, 64, 64, label="glass") == \
        "Please provide a short description for the glass in the red box."
    assert vlm.region_boxes(GLASS) == [{"bbox": [4.0, 6.0, 28.0, 30.0], "colour": "red"}]


def test_trained_model_tells_the_two_boxes_apart_by_the_drawn_box_alone(trained):
    vlm = VLMInference(trained["model"])
    two, one = trained["images"] / "scenes/two.png", trained["images"] / "scenes/one.png"
    # The same question for both boxes: only the red outline on the image differs.
    assert vlm.describe_object(two, GLASS) == "a yellow glass on the table"
    assert vlm.describe_object(two, BOTTLE) == "a blue bottle on the grass"
    assert vlm.describe_object(one, [8, 4, 40, 28], label="glass") == "a red glass on the sand"
    assert vlm.describe_objects([(two, BOTTLE), (two, GLASS)], batch_size=2) == \
        ["a blue bottle on the grass", "a yellow glass on the table"]


def test_predict_draws_each_records_boxes(trained, tmp_path, capsys):
    out = tmp_path / "predictions.jsonl"
    assert predict.main(["--model_path", str(trained["model"]), "--data", str(trained["data"]),
                         "--image_dir", str(trained["images"]), "--output_file", str(out),
                         "--batch_size", "4"]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(trained["records"]) == 10
    assert all(r["answer"] == r["reference"] for r in lines), lines


def test_eval_generate_asks_with_the_records_boxes_drawn(trained, tmp_path):
    """train_vlm.py --eval_generate asks the validation questions as predict.py does: boxes drawn."""
    import contextlib

    from vlm_training.generation_eval import GenerationEvaluator, val_questions
    questions = val_questions(trained["data"])
    assert questions[2]["drawn_boxes"] == [{"bbox": GLASS, "colour": "red"}] and "drawn_boxes" in questions[0]
    vlm = VLMInference(trained["model"])
    evaluator = GenerationEvaluator(questions, trained["images"], vlm.processor, vlm.prompt_format, vlm.family,
                                    vlm.frame, 64, 4, tmp_path, str(trained["data"]))
    answers = evaluator.answer(vlm.model, 0, len(questions), contextlib.nullcontext())
    assert answers == [q["reference"] for q in questions]


def test_training_draws_exactly_what_inference_draws(trained, tiny_models):
    from transformers import AutoProcessor

    from vlm_core import families
    from vlm_training.llava_data import LlavaCollator, TokenLayout, load_llava_dataset
    processor = AutoProcessor.from_pretrained(tiny_models["llava"])
    layout = TokenLayout(processor, PromptFormat.from_chat_template(processor).with_box_prompt("visual"))
    layout.frame = families.frame_for_family("llava")
    dataset, _ = load_llava_dataset(trained["data"], trained["images"], layout, 2048)
    index = next(i for i, r in enumerate(trained["records"]) if r["box_prompt"]["boxes"] ==
                 [{"bbox": BOTTLE, "colour": "red"}])
    training = LlavaCollator(layout.pad_token_id)([dataset[index]])["pixel_values"][0]

    vlm = VLMInference(trained["model"])
    image = vi.load_image(trained["images"] / "scenes/two.png")
    asked = vlm.model_image(image, vlm.region_boxes(BOTTLE))
    inference = vlm.processor(images=[asked], text=[vlm.prompt("q")], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(training, inference)
    plain = vlm.processor(images=[vlm.model_image(image)], text=[vlm.prompt("q")], return_tensors="pt")
    assert not torch.equal(training, plain["pixel_values"][0])   # the drawn box is what differs


def test_an_explicit_other_box_prompt_asks_that_way_with_a_warning(trained, capsys):
    with pytest.warns(BoxPromptWarning, match=r"box_prompt text: .* was trained with box_prompt visual"):
        vlm = VLMInference(trained["model"], box_prompt="text")
    assert vlm.region_boxes(GLASS) == []
    assert vlm.region_question(GLASS, 64, 64).startswith("Please provide a short description for this region: [")
    with pytest.raises(ValueError, match="box_prompt must be one of text, visual, both"):
        VLMInference(trained["model"], box_prompt="drawn")
    # the command line prints the warning as one line and answers
    two = trained["images"] / "scenes/two.png"
    assert vi.main(["--model_path", str(trained["model"]), "--image", str(two), "--bbox", *map(str, BOTTLE),
                    "--box_prompt", "both", "--max_new_tokens", "4"]) == 0
    told = [line for line in capsys.readouterr().err.splitlines() if "box_prompt" in line]  # not the progress bars
    assert len(told) == 1 and told[0].startswith("warning: box_prompt both: ") and told[0].endswith("as told")


def test_cli_describes_with_a_drawn_box_by_default(trained, capsys):
    two = trained["images"] / "scenes/two.png"
    assert vi.main(["--model_path", str(trained["model"]), "--image", str(two), "--bbox", *map(str, GLASS)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "a yellow glass on the table" and "warning" not in captured.err


def test_data_converted_another_way_is_refused_in_one_line(trained, tiny_models, tmp_path, capsys):
    text_data = _convert(tmp_path, name="text.json")
    # training with visual prompts on text data
    rc = train_vlm.main(_train_args(text_data, trained["images"], tmp_path / "m", tiny_models["llava"]))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "record 0 (id 'scenes/two.png#0'): converted with --box_prompt text, but this run trains with " \
           "--box_prompt visual; rerun convert_to_llava_format.py --box_prompt visual" in err
    # predicting text data with the visual model (as trained), and visual data asked as text
    out = tmp_path / "p.jsonl"
    common = ["--model_path", str(trained["model"]), "--image_dir", str(trained["images"]), "--output_file", str(out)]
    assert predict.main(common + ["--data", str(text_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "converted with --box_prompt text, but the model is asked with --box_prompt (as it was trained) " \
           "visual; convert the data again with --box_prompt visual, or pass --box_prompt text" in err
    assert predict.main(common + ["--data", str(trained["data"]), "--box_prompt", "text"]) == 2
    assert "converted with --box_prompt visual, but the model is asked with --box_prompt text" in \
        capsys.readouterr().err
    assert not out.exists()
