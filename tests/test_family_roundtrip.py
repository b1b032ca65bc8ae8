"""Issue 14: for every model family, train_vlm.py makes its tiny model memorise a few records whose
boxes are written in the family's own frame, and VLMInference gives the answers back exactly
(answer_question, describe_object, label_object) and the box back in pixels of the original image (locate).
Records rendered for another frame are refused in one line."""
from __future__ import annotations

import pytest

from fixtures.tiny_models import FAMILY_MODELS
from fixtures.toy_data import shape_box, write_toy_images
from vlm_core import families, prompts
from vlm_core.io_utils import write_json_atomic
from vlm_core.llava_format import IMAGE_PLACEHOLDER
from vlm_inference.vlm_inference import VLMInference
from vlm_training import train_vlm

FAMILIES = ("llava", *FAMILY_MODELS)


def family_records(frame: families.BoxFrame) -> list[dict]:
    """The toy images' records with every box rendered for ``frame`` (what convert --base_model writes)."""
    green, white, blue = shape_box(32, 48), shape_box(64, 24), [10, 10, 30, 30]
    rows = [
        ("scenes/red.png", 48, 32, prompts.COUNT_CLASS.format(plural=prompts.plural("can")),
         prompts.count_answer(2, "can"), "count"),
        ("scenes/green.png", 32, 48, prompts.REGION_DESCRIPTION.format(box=frame.render_box(green, 32, 48)),
         "a blue bottle on the grass", "region_description"),
        ("scenes/blue.jpg", 40, 40, prompts.EXISTS.format(label="glass"), "Yes, there is a glass.", "exists"),
        ("scenes/sub/white.png", 64, 24, prompts.GROUNDING.format(text="the black paper"),
         frame.render_answer(white, 64, 24, "paper"), "grounding"),
        ("scenes/blue.jpg", 40, 40, prompts.REGION_DESCRIPTION_LABELED.format(
            label="glass", box=frame.render_box(blue, 40, 40)), "a yellow glass on the table", "region_description"),
        ("scenes/red.png", 48, 32, prompts.REGION_LABEL.format(box=frame.render_box(shape_box(48, 32), 48, 32)),
         "can", "region_label"),
    ]
    return [{"id": f"{image}#{i}", "image": image, "width": w, "height": h,
             "conversations": [{"from": "human", "value": IMAGE_PLACEHOLDER + q}, {"from": "gpt", "value": a}],
             "qa_types": [kind], families.FRAME_KEY: frame.to_dict()}
            for i, (image, w, h, q, a, kind) in enumerate(rows)]


def _train(base, data, images, out, extra=()):
    return train_vlm.main(["--train_data", str(data), "--image_dir", str(images), "--output_dir", str(out),
                           "--base_model", str(base), "--use_lora", "--lora_r", "16", "--lora_alpha", "32",
                           "--lora_dropout", "0", "--learning_rate", "1e-2", "--max_steps", "60",
                           "--batch_size", "6", "--warmup_ratio", "0", "--save_steps", "0", "--logging_steps", "20",
                           "--seed", "0", *extra])


@pytest.mark.parametrize("name", FAMILIES)
def test_family_memorises_and_answers_in_its_own_frame(name, tiny_models, tmp_path):
    base = tiny_models[name]
    frame = families.frame_for(base)
    images = write_toy_images(tmp_path / "images")
    records = family_records(frame)
    data = tmp_path / "train.json"
    write_json_atomic(data, records)
    out = tmp_path / "model"
    # One family also writes a checkpoint: it carries the frame as the final model does.
    assert _train(base, data, images, out, ["--save_steps", "60"] if name == "qwen2_5_vl" else []) == 0
    assert families.BoxFrame.load(out) == frame and families.detect_family(out).name == name
    if name == "qwen2_5_vl":
        assert families.BoxFrame.load(out / "checkpoint-60") == frame

    vlm = VLMInference(out)
    assert vlm.family.name == name and vlm.frame == frame
    if name != "llava":  # --system_prompt auto: the family's own (ViP-LLaVA's model card sentence; none elsewhere)
        assert vlm.prompt_format.system_prompt == families.FAMILIES[name].default_system_prompt
    if name == "vip_llava":  # the template its model card recommends, system sentence and all
        assert families.question_prompt(vlm.family, vlm.processor, vlm.prompt_format, "Q") == (
            families.VIP_LLAVA_SYSTEM_PROMPT + "###Human: <image>\nQ###Assistant:")
    question = [r["conversations"][0]["value"].removeprefix(IMAGE_PLACEHOLDER) for r in records]
    answer = [r["conversations"][1]["value"] for r in records]
    assert vlm.answer_question(images / "scenes/red.png", question[0]) == answer[0]
    assert vlm.answer_question(images / "scenes/blue.jpg", question[2]) == answer[2]
    assert vlm.describe_object(images / "scenes/green.png", shape_box(32, 48)) == answer[1]
    assert vlm.describe_object(images / "scenes/blue.jpg", [10, 10, 30, 30], label="glass") == answer[4]
    assert vlm.answer_question(images / "scenes/sub/white.png", question[3]) == answer[3]
    assert vlm.label_object(images / "scenes/red.png", shape_box(48, 32)) == answer[5] == "can"
    assert vlm.label_objects([(images / "scenes/red.png", shape_box(48, 32)), {
        "image": images / "scenes/red.png", "bbox": shape_box(48, 32), "label": "ignored"}]) == ["can", "can"]
    box = vlm.locate(images / "scenes/sub/white.png", "the black paper")
    assert box == frame.parse_box(answer[3], 64, 24)
    assert vlm.locate_objects([(images / "scenes/sub/white.png", "the black paper"), {
        "image": images / "scenes/sub/white.png", "description": "the black paper"}], batch_size=2) == [box, box]
    assert max(abs(a - b) for a, b in zip(box, shape_box(64, 24))) <= 1.0


def test_records_rendered_for_another_frame_are_refused(tiny_models, tmp_path, capsys):
    images = write_toy_images(tmp_path / "images")
    data = tmp_path / "train.json"
    write_json_atomic(data, family_records(families.frame_for(tiny_models["qwen2_vl"])))
    base = tiny_models["qwen2_5_vl"]
    assert _train(base, data, images, tmp_path / "model") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "boxes were rendered for qwen2_vl" in err
    assert err.endswith(f"rerun convert_to_llava_format.py --base_model {base}")
    assert not (tmp_path / "model" / "adapter_model.safetensors").exists()


def test_predict_refuses_records_rendered_for_another_frame(tiny_models, tmp_path, capsys):
    from vlm_inference import predict
    images = write_toy_images(tmp_path / "images")
    data = tmp_path / "val.json"
    write_json_atomic(data, family_records(families.frame_for(tiny_models["qwen3_vl"])))
    out = tmp_path / "predictions.jsonl"
    model = str(tiny_models["llava_next"])
    assert predict.main(["--model_path", model, "--data", str(data), "--image_dir", str(images),
                         "--output_file", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "rendered for qwen3_vl" in err and "uses llava_next" in err
    assert not out.exists()


def test_vip_llava_trains_on_the_padded_square_that_inference_shows_it(tiny_models):
    """ViP-LLaVA's frame is the padded square (its --image_aspect_ratio pad): training feeds the image padded in
    the processor's mean, exactly as VLMInference does, not the centre crop its CLIP processor alone would make."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor

    from vlm_core import boxes, generation
    from vlm_core.prompts import PromptFormat
    from vlm_training.family_data import FamilyLayout
    base = tiny_models["vip_llava"]
    processor = AutoProcessor.from_pretrained(base)
    family = families.detect_family(base)
    layout = FamilyLayout(processor, PromptFormat(pad_to_square=False), family)
    layout.frame = families.frame_from_processor(family, processor)
    image = Image.new("RGB", (64, 24), (200, 30, 30))
    trained = layout.image_inputs(image, 16, "scenes/wide.png")["pixel_values"]
    square = boxes.pad_to_square(image, processor.image_processor.image_mean)
    assert layout.frame.prepare_image(image, generation.pad_fill(processor)).tobytes() == square.tobytes()
    assert torch.equal(trained, processor.image_processor(images=square, return_tensors="pt")["pixel_values"][0])
    assert not torch.equal(trained, processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0])
