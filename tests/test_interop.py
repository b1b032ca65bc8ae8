"""Other trainers on our data (docs/interop.md): the LLaMA-Factory and ms-swift exports, the square images whose
pixels match the boxes, the EXIF note printed once, and the chat template saved with a trained model.

The real LLaMA-Factory and ms-swift runs are scripts/interop.sh (``make interop``): they need their packages.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vlm_core import families, prompts
from vlm_core.boxes import square_offsets
from vlm_training import convert_to_llava_format as convert
from vlm_training import trainer_export

SYSTEM = prompts.SYSTEM_PROMPTS["llava_v1"]
RED, GREEN = (220, 30, 30), (40, 120, 40)
# LLaVA-1.5's processor mean as 0..255, the way expand2square pads (int(), not round()).
MEAN_FILL = tuple(int(v * 255) for v in trainer_export.CLIP_IMAGE_MEAN)
# 128x80: the bottle is against the left edge, which a centre crop of the unpadded image cuts away.
WIDE = {"image": "wide.png", "width": 128, "height": 80, "caption": "",
        "objects": [{"id": 0, "label": "bottle", "bbox": [2.0, 24.0, 30.0, 64.0], "score": 0.9, "sources": ["manual"],
                     "description": ""}],
        "qa": [{"question": prompts.COUNT, "answer": prompts.count_answer(1), "type": "count", "object_ids": []},
               {"question": prompts.REGION_LABEL.format(box="<box:0>"), "answer": "bottle", "type": "region_label",
                "object_ids": [0]},
               {"question": prompts.GROUNDING.format(text="the bottle"), "answer": "<box:0>", "type": "grounding",
                "object_ids": [0]}]}
BOX_TEXT = "[0.02, 0.38, 0.23, 0.69]"   # [2, 24+24, 30, 64+24] / 128 in the 128x128 square


def _data(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    img = Image.new("RGB", (128, 80), GREEN)
    ImageDraw.Draw(img).rectangle([2, 24, 30, 64], fill=RED)
    img.save(images / "wide.png")
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps({"images": [WIDE], "skipped": [], "meta": {}}))
    return ann, images


def _convert(tmp_path, *extra):
    ann, images = _data(tmp_path)
    rc = convert.main(["--annotation_file", str(ann), "--output_file", str(tmp_path / "train_llava.json"),
                       "--image_dir", str(images), "--square_images_dir", str(tmp_path / "square"),
                       "--llamafactory_dir", str(tmp_path / "lf"), "--swift_dir", str(tmp_path / "swift"), *extra])
    assert rc == 0
    return images


def test_llamafactory_export_is_sharegpt_with_its_dataset_info(tmp_path):
    _convert(tmp_path)
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert info == {"train_llava": {
        "file_name": "train_llava.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images", "system": "system"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}
    records = json.loads((tmp_path / "lf" / "train_llava.json").read_text())
    assert records == [{"messages": [
        {"role": "user", "content": "<image>\nHow many objects are there?"},
        {"role": "assistant", "content": "There is 1 object in this image."},
        {"role": "user", "content": f"What is the object in this region: {BOX_TEXT}? Answer with one word."},
        {"role": "assistant", "content": "bottle"},
        {"role": "user", "content": "Please provide the bounding box coordinate of the region this sentence "
                                    "describes: the bottle"},
        {"role": "assistant", "content": BOX_TEXT}],
        "images": ["wide.png"], "system": SYSTEM}]
    # the text is the LLaVA file's, turn for turn
    llava = json.loads((tmp_path / "train_llava.json").read_text())
    assert [t["value"] for t in llava[0]["conversations"]] == [m["content"] for m in records[0]["messages"]]


def test_a_second_split_joins_the_same_dataset_info(tmp_path):
    ann, images = _data(tmp_path)
    rc = convert.main(["--annotation_file", str(ann), str(ann), "--output_file", str(tmp_path / "train_llava.json"),
                       str(tmp_path / "val_llava.json"), "--llamafactory_dir", str(tmp_path / "lf"),
                       "--system_prompt", "none"])
    assert rc == 0
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert sorted(info) == ["train_llava", "val_llava"]
    assert info["val_llava"]["file_name"] == "val_llava.json"
    assert "system" not in info["val_llava"]["columns"]
    assert "system" not in json.loads((tmp_path / "lf" / "val_llava.json").read_text())[0]


def test_swift_export_is_its_grounding_format_in_the_square_images_pixels(tmp_path):
    _convert(tmp_path)
    lines = (tmp_path / "swift" / "train_llava.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "<image>How many objects are there?"},   # its template adds the "\n"
            {"role": "assistant", "content": "There is 1 object in this image."},
            {"role": "user", "content": "What is the object in this region: <bbox>? Answer with one word."},
            {"role": "assistant", "content": "bottle"},
            {"role": "user", "content": "Please provide the bounding box coordinate of the region this sentence "
                                        "describes: the bottle"},
            {"role": "assistant", "content": "<bbox>"}],
        "images": [str((tmp_path / "square" / "wide.png").resolve())],
        # the bottle's pixels moved down by the padding above the image (24 px), one box per <bbox> tag
        "objects": {"ref": ["bottle", "bottle"], "bbox": [[2.0, 48.0, 30.0, 88.0], [2.0, 48.0, 30.0, 88.0]],
                    "bbox_type": "real"}}


def test_swift_text_boxes_keep_our_notation_and_the_original_pixels_without_square_images(tmp_path):
    ann, images = _data(tmp_path)
    assert convert.main(["--annotation_file", str(ann), "--output_file", str(tmp_path / "o.json"), "--image_dir",
                         str(images), "--swift_dir", str(tmp_path / "swift"), "--swift_boxes", "text"]) == 0
    rec = json.loads((tmp_path / "swift" / "o.jsonl").read_text())
    assert "objects" not in rec
    assert rec["messages"][-1] == {"role": "assistant", "content": BOX_TEXT}
    assert rec["images"] == [str((images / "wide.png").resolve())]
    # with objects and no square images, the boxes are the original image's pixels
    assert convert.main(["--annotation_file", str(ann), "--output_file", str(tmp_path / "p.json"),
                         "--swift_dir", str(tmp_path / "swift")]) == 0
    rec = json.loads((tmp_path / "swift" / "p.jsonl").read_text())
    assert rec["objects"]["bbox"] == [[2.0, 24.0, 30.0, 64.0]] * 2
    assert rec["images"] == ["wide.png"]   # no folder known: as written, relative to where ms-swift runs


def test_square_image_is_our_padding_and_the_box_lands_on_the_object(tmp_path):
    images = _convert(tmp_path)
    square = Image.open(tmp_path / "square" / "wide.png")
    assert square.size == (128, 128)
    pixels = np.asarray(square)
    assert tuple(pixels[5, 64]) == MEAN_FILL and tuple(pixels[120, 64]) == MEAN_FILL   # bands above and below
    # the same pixels as training's own preparation of the image
    frame = families.frame_for_family("llava")
    ours = frame.prepare_image(Image.open(images / "wide.png").convert("RGB"), trainer_export.CLIP_IMAGE_MEAN)
    assert np.array_equal(pixels, np.asarray(ours))
    # the box as the text says it, read on the square image: the bottle fills it
    x1, y1, x2, y2 = (round(v * 128) for v in json.loads(BOX_TEXT))
    inside = pixels[y1 + 1:y2 - 1, x1 + 1:x2 - 1].reshape(-1, 3)
    assert (inside == RED).all(axis=1).mean() > 0.9


def test_centre_crop_keeps_the_object_only_on_the_square_image(tmp_path):
    """What LLaMA-Factory and ms-swift do with the image (a CLIP processor: resize the short side, centre-crop):
    on the original the bottle at the edge is cut away, on the square image it stays where its box says."""
    from transformers import CLIPImageProcessor
    images = _convert(tmp_path)
    clip = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                              image_mean=[0, 0, 0], image_std=[1, 1, 1], do_normalize=False)

    def red_share(path, box):   # the share of red pixels in the box (0..1 of the 64x64 crop the model sees)
        px = clip(images=Image.open(path).convert("RGB"), return_tensors="np")["pixel_values"][0]  # 3x64x64, 0..1
        x1, y1, x2, y2 = (round(v * 64) for v in box)
        region = px[:, y1 + 1:y2 - 1, x1 + 1:x2 - 1]
        return float(((region[0] > 0.7) & (region[1] < 0.3)).mean())

    box = json.loads(BOX_TEXT)
    assert red_share(tmp_path / "square" / "wide.png", box) > 0.9
    assert red_share(images / "wide.png", box) < 0.5


def test_exif_note_is_printed_once_for_several_files(tmp_path, capsys):
    ann, _ = _data(tmp_path)
    assert convert.main(["--annotation_file", str(ann), str(ann), str(ann), "--output_file",
                         *(str(tmp_path / f"{s}_llava.json") for s in ("train", "val", "test"))]) == 0
    out = capsys.readouterr().out
    assert out.count("images not checked for EXIF rotation") == 1
    assert out.count("wrote 1 records") == 3
    assert all((tmp_path / f"{s}_llava.json").is_file() for s in ("train", "val", "test"))


@pytest.mark.parametrize("argv, message", [
    (["--output_file", "a.json", "b.json"], "--output_file: 2 file(s) for 1 --annotation_file(s)"),
    (["--output_file", "a.json", "--square_images_dir", "sq"], "--square_images_dir needs --image_dir"),
    (["--output_file", "a.json", "--swift_dir", "s", "--box_prompt", "visual"], "--box_prompt visual: other trainers"),
    (["--output_file", "a.json", "--image_dir", ".", "--square_images_dir", "sq", "--base_model",
      "Qwen/Qwen2-VL-2B-Instruct"], "need no padding"),
])
def test_bad_export_flags_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    ann, _ = _data(tmp_path)
    assert convert.main(["--annotation_file", str(ann), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


# --------------------------------------------------------------------------- the chat template of a trained model
def test_prompt_format_chat_template_renders_training_text(tiny_models):
    from transformers import AutoProcessor

    from vlm_training.llava_data import conversation_segments
    processor = AutoProcessor.from_pretrained(tiny_models["llava"])
    fmt = prompts.PromptFormat.from_chat_template(processor).with_system_prompt("auto")
    processor.chat_template = fmt.chat_template(processor.tokenizer.eos_token)
    turns = [("How many cans are there?", "There are 2 cans."), ("Is there a glass in this image?", "Yes.")]
    record = {"conversations": [{"from": "human", "value": "<image>\n" + turns[0][0]},
                                {"from": "gpt", "value": turns[0][1]},
                                {"from": "human", "value": turns[1][0]}, {"from": "gpt", "value": turns[1][1]}]}
    training = "".join(text for text, _ in conversation_segments(record, fmt, "</s>"))
    assert training == (SYSTEM + " USER: <image>\nHow many cans are there? ASSISTANT: There are 2 cans.</s>"
                        "USER: Is there a glass in this image? ASSISTANT: Yes.</s>")
    assert processor.apply_chat_template(families.chat_messages(turns), tokenize=False) == training
    # a system message replaces the default one; default_system="" drops it; the generation prompt is inference's
    assert processor.apply_chat_template(families.chat_messages(turns[:1], system="Be brief."), tokenize=False) == \
        "Be brief. USER: <image>\nHow many cans are there? ASSISTANT: There are 2 cans.</s>"
    assert processor.apply_chat_template(families.chat_messages([("Q?", None)]), tokenize=False,
                                         add_generation_prompt=True, default_system="") == \
        "USER: <image>\nQ? ASSISTANT:"
    assert families.generation_prompt(processor, "Q?") == fmt.prompt("Q?", first=True)
    # and the layout read back from it is the one it was made from
    assert prompts.PromptFormat.from_chat_template(processor) == prompts.PromptFormat.from_chat_template(
        AutoProcessor.from_pretrained(tiny_models["llava"]))


def test_trained_model_saves_a_chat_template_that_renders_what_training_used(tiny_models, tmp_path):
    """train_vlm.py on two-turn records; the saved processor's apply_chat_template gives the training text byte for
    byte, and the processor tokenizes it to the training example's input ids."""
    from transformers import AutoProcessor

    from fixtures.toy_data import write_toy_llava_dataset
    from vlm_training.llava_data import TokenLayout, build_examples
    from vlm_training.train_vlm import main as train
    json_path, image_dir, records = write_toy_llava_dataset(tmp_path / "toy")
    second = records[2]["conversations"]   # one record with two turns
    records[0]["conversations"] += [{"from": "human", "value": second[0]["value"][len("<image>\n"):]},
                                    second[1]]
    records[0]["qa_types"] += records[2]["qa_types"]
    json_path.write_text(json.dumps(records))
    out = tmp_path / "model"
    assert train(["--train_data", str(json_path), "--image_dir", str(image_dir), "--output_dir", str(out),
                  "--base_model", str(tiny_models["llava"]), "--use_lora", "--max_steps", "1", "--batch_size", "2",
                  "--save_steps", "0"]) == 0
    processor = AutoProcessor.from_pretrained(out)
    fmt = prompts.PromptFormat.load(out)
    assert fmt.system_prompt == SYSTEM   # 'auto': LLaVA-1.5's own
    conv = records[0]["conversations"]
    turns = [(conv[0]["value"][len("<image>\n"):], conv[1]["value"]), (conv[2]["value"], conv[3]["value"])]
    rendered = processor.apply_chat_template(families.chat_messages(turns), tokenize=False)
    layout = TokenLayout(processor, fmt)
    assert rendered == "".join(text for text, _ in layout.segments(records[0]))
    assert " ASSISTANT: " + turns[0][1] + "</s>USER: " in rendered
    examples, _ = build_examples(records[:1], json_path, image_dir, layout, 2048)
    image = Image.new("RGB", (32, 32))
    ids = processor(text=[rendered], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    assert ids == layout.expand(examples[0].input_ids)


def test_square_offsets_of_the_export_match_the_padding():
    # the swift boxes move by the same integer offsets pad_to_square pastes the image at
    assert trainer_export.swift_offset({"width": 128, "height": 80}, True) == (0.0, 24.0)
    assert trainer_export.swift_offset({"width": 81, "height": 128}, True) == square_offsets(81, 128)[1:]
    assert trainer_export.swift_offset({"width": 81, "height": 128}, False) == (0.0, 0.0)
