"""VLMInference on the tiny LLaVA: loading (base, adapter, merged), prompts, batching, bad input, CLI."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image, ImageDraw

from vlm_core import boxes, prompts
from vlm_core.model_dir import SAVING_MARKER
from vlm_core.prompts import PromptFormat
from vlm_inference import vlm_inference as vi
from vlm_inference.vlm_inference import InferenceInputError, VLMInference

LORA_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
GEN = {"max_new_tokens": 8}
SPECIAL = ("<s>", "</s>", "<pad>", "<image>", "<unk>")


def _image(size, colour):
    img = Image.new("RGB", size, colour)
    w, h = size
    ImageDraw.Draw(img).ellipse([w // 5, h // 5, w // 2, h // 2], fill=(250, 250, 250))
    return img


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three image files of different shapes (wide, tall, square)."""
    d = tmp_path_factory.mktemp("inference_images")
    paths = []
    for name, size, colour in [("wide.jpg", (120, 80), (200, 40, 40)), ("tall.png", (60, 100), (40, 160, 60)),
                               ("square.png", (90, 90), (40, 60, 200))]:
        _image(size, colour).save(d / name)
        paths.append(d / name)
    return paths


@pytest.fixture(scope="module")
def vlm(tiny_models):
    """The tiny LLaVA loaded as a base model (its own folder is the model path)."""
    return VLMInference(tiny_models["llava"])


def _logits(model, processor, image, question="How many cans are there?"):
    fmt = PromptFormat()
    inputs = processor(images=[boxes.pad_to_square(image, processor.image_processor.image_mean)],
                       text=[fmt.prompt(question)], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def adapter_dir(tiny_models, tmp_path_factory):
    """A LoRA adapter made with peft directly on the tiny LLaVA, saved the way training saves it.

    LoRA B is initialised randomly (not to zero) so the adapter really changes the answers.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.manual_seed(0)
    base = LlavaForConditionalGeneration.from_pretrained(tiny_models["llava"])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_REGEX, init_lora_weights=False)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    processor = AutoProcessor.from_pretrained(tiny_models["llava"])
    processor.save_pretrained(out)
    # A format that differs from the default, to prove inference asks the way training wrote.
    PromptFormat(first_turn="USER: <image>\n{question}\nASSISTANT:").save(out)
    model.eval()
    reference = _logits(model, processor, _image((70, 50), (90, 90, 20)))
    return out, reference


# ------------------------------------------------------------------ loading
def test_base_model_loads_alone_in_eval_mode(vlm, tiny_models):
    assert vlm.kind == "model" and vlm.base_model is None
    assert not vlm.model.training
    assert vlm.prompt_format == PromptFormat()  # no prompt_format.json: the default one
    assert vlm.tokenizer.padding_side == "left"
    assert vlm.pad_fill == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert vlm.device == "cpu" and vlm.dtype == torch.float32


def test_adapter_loads_on_base_named_in_its_config(adapter_dir, tiny_models):
    path, reference = adapter_dir
    loaded = VLMInference(path)
    assert loaded.kind == "adapter"
    assert loaded.base_model == str(tiny_models["llava"])
    assert loaded.prompt_format.first_turn == "USER: <image>\n{question}\nASSISTANT:"
    logits = _logits(loaded.model, loaded.processor, _image((70, 50), (90, 90, 20)))
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)
    base = VLMInference(tiny_models["llava"])
    base_logits = _logits(base.model, base.processor, _image((70, 50), (90, 90, 20)))
    assert (base_logits - reference).abs().max() > 0.1  # the adapter really is in use


def test_adapter_base_override_and_missing_base(adapter_dir, tiny_models, tmp_path):
    path, reference = adapter_dir
    moved = tmp_path / "adapter"
    shutil.copytree(path, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone" / "llava")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InferenceInputError, match="pass --base_model"):
        VLMInference(moved)
    loaded = VLMInference(moved, base_model=str(tiny_models["llava"]))
    logits = _logits(loaded.model, loaded.processor, _image((70, 50), (90, 90, 20)))
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


def test_merged_model_loads_as_a_full_model(adapter_dir, tiny_models, tmp_path):
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    path, reference = adapter_dir
    base = LlavaForConditionalGeneration.from_pretrained(tiny_models["llava"])
    merged = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    AutoProcessor.from_pretrained(tiny_models["llava"]).save_pretrained(tmp_path / "merged")
    loaded = VLMInference(tmp_path / "merged")
    assert loaded.kind == "model"
    logits = _logits(loaded.model, loaded.processor, _image((70, 50), (90, 90, 20)))
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


def test_loading_errors_are_clear(tmp_path, tiny_models):
    with pytest.raises(InferenceInputError, match="neither a LoRA adapter"):
        VLMInference(tmp_path)
    with pytest.raises(InferenceInputError, match="model not found"):
        VLMInference(tmp_path / "no_such_model")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        VLMInference(tiny_models["llava"], device="cpu", load_in_4bit=True)
    with pytest.raises(ValueError, match="'int3' is not one of auto, fp32, bf16, fp16"):
        VLMInference(tiny_models["llava"], dtype="int3")
    with pytest.raises(ValueError, match="not both"):
        VLMInference(tiny_models["llava"], precision="fp32", dtype="fp32")
    copy = tmp_path / "llava_copy"
    shutil.copytree(tiny_models["llava"], copy)
    (copy / "prompt_format.json").write_text(json.dumps({"first_turn": "USER: {question} ASSISTANT:"}))
    with pytest.raises(InferenceInputError, match="prompt_format.json: .*no image token"):
        VLMInference(copy)


# ------------------------------------------------------------------ prompts
def test_region_question_uses_the_shared_box_text(vlm):
    # 200x100 image padded to 200x200 (50 px above): y 30..80 -> 0.40..0.65 of the square.
    assert vlm.region_question([50, 30, 150, 80], 200, 100) == \
        "Please provide a short description for this region: [0.25, 0.40, 0.75, 0.65]"
    assert vlm.region_question([50, 30, 150, 80], 200, 100, label="glass") == \
        "Please provide a short description for this glass: [0.25, 0.40, 0.75, 0.65]"
    assert vlm.grounding_question(" the red can ") == prompts.GROUNDING.format(text="the red can")
    assert vlm.clean_question("<image>\nHow many cans are there? ") == "How many cans are there?"


def test_box_prompts_on_a_base_model_are_asked_as_told_without_a_warning(tiny_models, recwarn):
    # A base model was taught nothing of ours (no prompt_format.json): any box_prompt is no conflict.
    both = VLMInference(tiny_models["llava"], box_prompt="both")
    assert not [w for w in recwarn if issubclass(w.category, vi.BoxPromptWarning)]
    assert both.region_question([50, 30, 150, 80], 200, 100) == \
        "Please provide a short description for the object in the red box [0.25, 0.40, 0.75, 0.65]."
    assert both.region_boxes([50, 30, 150, 80]) == [{"bbox": [50.0, 30.0, 150.0, 80.0], "colour": "red"}]
    # What the model sees: the red outline on the original pixels, then the padding to a square.
    seen = both.model_image(Image.new("RGB", (200, 100), (0, 0, 0)), both.region_boxes([50, 30, 150, 80]))
    assert seen.size == (200, 200)
    assert seen.getpixel((50, 80)) == seen.getpixel((149, 129)) == (255, 0, 0)   # corners, 50 px padding above
    assert seen.getpixel((100, 100)) == (0, 0, 0) and seen.getpixel((0, 0)) == (122, 116, 104)
    with pytest.raises(InferenceInputError, match=r"^drawn_boxes\[1\]: boxes\[0\]\.colour must be one of red, ") as err:
        both.answer_questions(["unused.png"] * 2, ["What is in the red box?", "What is in the pink box?"],
                              drawn_boxes=[None, [{"bbox": [1, 1, 5, 5], "colour": "pink"}]])
    assert err.value.index == 1


def test_model_sees_the_image_padded_to_a_square(vlm):
    padded = vlm.model_image(Image.new("RGB", (40, 20), (255, 0, 0)))
    assert padded.size == (40, 40)
    assert padded.getpixel((0, 0)) == (122, 116, 104)  # int(255 * image_mean), as LLaVA pads
    assert padded.getpixel((20, 20)) == (255, 0, 0)


# ------------------------------------------------------------------ answers
def test_answers_are_clean_strings(vlm, images):
    for text in (vlm.describe_object(images[0], [10, 10, 60, 50], label="can", **GEN),
                 vlm.answer_question(str(images[1]), "How many objects are there?", **GEN)):
        assert isinstance(text, str) and text == text.strip()
        assert not any(tok in text for tok in SPECIAL)
        assert "ASSISTANT" not in text and "Please provide" not in text


def test_batched_equals_one_at_a_time(vlm, images):
    pil = Image.open(images[2]).convert("RGB")
    questions = ["How many objects are there?", "Is there a glass in this image?",
                 "Where is the bottle at [0.10, 0.20, 0.30, 0.40] relative to the can on the grass?",
                 "What is it?", "How many bottles are there?"]
    imgs = [images[0], images[1], pil, images[0], str(images[2])]
    # The prompts differ in length, so the batch really is left-padded.
    lengths = {len(vlm.tokenizer(vlm.prompt_format.prompt(q)).input_ids) for q in questions}
    assert len(lengths) > 2
    one_by_one = [vlm.answer_question(i, q, max_new_tokens=12) for i, q in zip(imgs, questions)]
    assert vlm.answer_questions(imgs, questions, batch_size=5, max_new_tokens=12) == one_by_one
    assert vlm.answer_questions(imgs, questions, batch_size=2, max_new_tokens=12) == one_by_one
    items = [(images[0], [10, 10, 60, 50], "can"), {"image": images[1], "bbox": [0, 0, 30, 90]},
             (pil, [5, 5, 80, 40], "plastic bottle"), (images[0], [100, 70, 120, 80])]
    single = [vlm.describe_object(*item, max_new_tokens=12) if isinstance(item, tuple)
              else vlm.describe_object(item["image"], item["bbox"], max_new_tokens=12) for item in items]
    assert vlm.describe_objects(items, batch_size=4, max_new_tokens=12) == single
    found = [(images[0], "the red can"), {"image": pil, "description": "the plastic bottle on the left"},
             (str(images[2]), "a glass")]
    assert vlm.locate_objects(found, batch_size=3, max_new_tokens=24) == [
        vlm.locate(item[0], item[1], max_new_tokens=24) if isinstance(item, tuple)
        else vlm.locate(item["image"], item["description"], max_new_tokens=24) for item in found]


def test_generation_is_greedy_by_default_and_overridable(vlm, images):
    question = "How many objects are there?"
    greedy = vlm.answer_question(images[0], question, max_new_tokens=12)
    torch.manual_seed(1)
    sampled = vlm.answer_question(images[0], question, max_new_tokens=12, do_sample=True, top_k=0)
    torch.manual_seed(1)
    assert vlm.answer_question(images[0], question, max_new_tokens=12, do_sample=True, top_k=0) == sampled
    assert sampled != greedy  # an untrained model's distribution is nearly flat
    assert len(vlm.answer_question(images[0], question, max_new_tokens=1)) < \
        len(vlm.answer_question(images[0], question, max_new_tokens=12, min_new_tokens=12))


def test_locate_returns_pixels_inside_the_image_or_none(vlm, images):
    box = vlm.locate(images[0], "the red can", **GEN)
    assert box is None or (len(box) == 4 and 0 <= box[0] <= box[2] <= 120 and 0 <= box[1] <= box[3] <= 80)


# ------------------------------------------------------------------ bad input
def test_missing_image_is_a_clear_error(vlm, tmp_path):
    with pytest.raises(ValueError, match="image not found"):
        vlm.answer_question(tmp_path / "nope.jpg", "How many objects are there?")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(InferenceInputError, match="not a recognised image"):
        vlm.describe_object(tmp_path / "bad.jpg", [0, 0, 5, 5])


def test_box_outside_the_image_is_clipped_with_a_warning(vlm, images):
    with pytest.warns(UserWarning, match=r"clipped to \[100.0, 50.0, 120.0, 80.0\]"):
        outside = vlm.describe_object(images[0], [100, 50, 300, 200], **GEN)
    assert outside == vlm.describe_object(images[0], [100, 50, 120, 80], **GEN)


@pytest.mark.parametrize("bbox, message", [
    ([60, 10, 20, 50], r"x2 \(20\) < x1 \(60\)"),
    ([10, 50, 60, 10], r"y2 \(10\) < y1 \(50\)"),
    ([200, 100, 300, 200], "lies outside the 120x80 image"),
    ([10, 10, 10, 40], "has no area"),
    ([1, 2, 3], "four finite numbers"),
    (["a", 2, 3, 4], "four numbers"),
    ([0, 0, float("nan"), 4], "four finite numbers"),
])
def test_bad_boxes_raise_value_errors(vlm, images, bbox, message):
    with pytest.raises(ValueError, match=message):
        vlm.describe_object(images[0], bbox)


def test_bad_questions_raise_value_errors(vlm, images):
    for question in ("", "   ", "<image>\n"):
        with pytest.raises(ValueError, match="question is empty"):
            vlm.answer_question(images[0], question)
    with pytest.raises(ValueError, match="image token"):
        vlm.answer_question(images[0], "What is in <image> here?")
    with pytest.raises(ValueError, match="2 images for 3 questions"):
        vlm.answer_questions(images[:2], ["a", "b", "c"])


# ------------------------------------------------------------------ command line
def test_cli_answers_and_describes(tiny_models, images, capsys):
    model = str(tiny_models["llava"])
    assert vi.main(["--model_path", model, "--image", str(images[0]), "--question", "How many cans are there?",
                    "--max_new_tokens", "6"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    vlm = VLMInference(model)
    assert out == [vlm.answer_question(images[0], "How many cans are there?", max_new_tokens=6)]
    assert vi.main(["--model_path", model, "--image", str(images[0]), "--bbox", "100", "50", "300", "200",
                    "--label", "can", "--max_new_tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == vlm.describe_object(images[0], [100, 50, 120, 80], "can", max_new_tokens=6)
    assert "warning: bbox" in captured.err and "clipped" in captured.err


@pytest.mark.parametrize("extra, message", [
    (["--bbox", "60", "10", "20", "50"], "x2 (20) < x1 (60)"),
    (["--question", "  "], "--question is empty"),
    (["--bbox", "200", "100", "300", "200"], "lies outside"),
])
def test_cli_bad_input_exits_2_with_one_line(tiny_models, images, capsys, extra, message):
    assert vi.main(["--model_path", str(tiny_models["llava"]), "--image", str(images[0])] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_cli_missing_image_and_model_exit_2(tiny_models, tmp_path, capsys):
    assert vi.main(["--model_path", str(tiny_models["llava"]), "--image", str(tmp_path / "x.jpg"),
                    "--question", "Hi?"]) == 2
    assert "--image: file not found" in capsys.readouterr().err
    (tmp_path / "x.jpg").write_bytes(b"")
    assert vi.main(["--model_path", str(tmp_path / "nomodel"), "--image", str(tmp_path / "x.jpg"),
                    "--question", "Hi?"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model_path: model not found" in err[0]


def test_cli_precision_flag_and_its_old_name(tiny_models, images):
    common = ["--model_path", str(tiny_models["llava"]), "--image", str(images[0]), "--question", "Hi?"]
    assert vi.parse_args(common).precision == "auto"
    assert vi.parse_args(common + ["--precision", "bf16"]).precision == "bf16"
    assert vi.parse_args(common + ["--dtype", "bfloat16"]).precision == "bf16"  # old name, old spelling
    with pytest.raises(SystemExit):
        vi.parse_args(common + ["--precision", "int3"])


def test_precision_loads_the_weights_in_that_dtype(tiny_models, images):
    vlm = VLMInference(tiny_models["llava"], precision="bf16")
    assert vlm.dtype == torch.bfloat16 and next(vlm.model.parameters()).dtype == torch.bfloat16
    assert isinstance(vlm.answer_question(images[0], "How many objects are there?", max_new_tokens=3), str)
    assert VLMInference(tiny_models["llava"], dtype="float32").dtype == torch.float32  # the old keyword


# ------------------------------------------------------------------ issue 16: hostile input
def test_nul_byte_in_an_image_path_is_one_clear_error(vlm):
    with pytest.raises(InferenceInputError, match="holds a NUL byte") as caught:
        vlm.answer_question("scenes/a\0b.jpg", "How many objects are there?")
    assert "embedded null byte" not in str(caught.value) and "\n" not in str(caught.value)


def _prompt_length(vlm, image, question):
    inputs = vlm.processor(images=[vlm.model_image(Image.open(image).convert("RGB"))],
                           text=[vlm.prompt_format.prompt(question)], return_tensors="pt")
    return int(inputs["input_ids"].shape[1])


def test_a_prompt_longer_than_the_context_is_refused(vlm, images):
    assert vlm.max_length == 2048  # the tiny LLaVA's max_position_embeddings
    huge = " ".join(["cat"] * 5000)  # ~5,000 tokens to a 2,048-token model
    with pytest.raises(InferenceInputError, match="exceeds the model's 2048-token context") as caught:
        vlm.answer_questions([images[0]] * 3, ["How many?", huge, "Where?"], max_new_tokens=4)
    assert caught.value.index == 1  # a batch caller can skip just that question
    # The bound is exact: prompt + new tokens may fill the context, not one token more.
    fits = "Is it " + " ".join(["cat"] * 2006) + "?"
    length = _prompt_length(vlm, images[0], fits)
    assert 2040 < length < 2048
    assert isinstance(vlm.answer_question(images[0], fits, max_new_tokens=2048 - length), str)
    with pytest.raises(InferenceInputError, match=f"the prompt is {length} tokens"):
        vlm.answer_question(images[0], fits, max_new_tokens=2049 - length)


def test_a_bad_item_of_a_batch_is_named_by_its_index(vlm, images, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(InferenceInputError, match="not a recognised image") as caught:
        vlm.answer_questions([images[0], images[1], tmp_path / "bad.jpg"], ["a", "b", "c"])
    assert caught.value.index == 2
    with pytest.raises(InferenceInputError, match="question is empty") as caught:
        vlm.answer_questions([images[0]] * 2, ["a", " "])
    assert caught.value.index == 1
    with pytest.raises(InferenceInputError, match="lies outside") as caught:
        vlm.describe_objects([(images[0], [1, 1, 5, 5]), (images[0], [500, 500, 600, 600])])
    assert caught.value.index == 1
    with pytest.raises(InferenceInputError, match="question is empty") as caught:
        vlm.locate_objects([(images[0], "the can"), (images[1], "  ")])
    assert caught.value.index == 1
    with pytest.raises(InferenceInputError, match=r"expected \(image, description\)") as caught:
        vlm.locate_objects([(images[0], "the can"), (images[1], "a", "b")])
    assert caught.value.index == 1


# ------------------------------------------------------------------ issue 10.5: the package import
_IMPORT_PROBE = """
import sys
import vlm_inference
import vlm_inference.predict
heavy = [m for m in ("torch", "transformers", "peft", "vlm_training.llava_data") if m in sys.modules]
from vlm_inference import VLMInference, InferenceInputError, BoxPromptWarning
from vlm_inference import vlm_inference as module
assert VLMInference is module.VLMInference and InferenceInputError is module.InferenceInputError
assert BoxPromptWarning is module.BoxPromptWarning  # for warnings.filterwarnings
heavy += [m for m in ("torch", "transformers") if m in sys.modules]
print("heavy:", heavy)
try:
    from vlm_inference import no_such_name
except ImportError as e:
    print("missing:", type(e).__name__)
"""


def test_package_exports_the_class_without_loading_torch():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["heavy: []", "missing: ImportError"]


def test_a_half_written_model_folder_is_refused(tiny_models, images, tmp_path, capsys):
    """train_vlm.py keeps saving.incomplete in --output_dir while it moves the final model in (issue 16)."""
    model = tmp_path / "vlm_model"
    shutil.copytree(tiny_models["llava"], model)
    shutil.copytree(tiny_models["llava"], model / "merged")
    (model / SAVING_MARKER).write_text("train_vlm.py is moving the final model into this folder\n")
    for path in (model, model / "merged"):
        with pytest.raises(InferenceInputError, match="is half-written: its final save was interrupted"):
            VLMInference(path)
        assert vi.main(["--model_path", str(path), "--image", str(images[0]), "--question", "Hi?"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "run the same train_vlm.py command again to finish it" in err[0]
    (model / SAVING_MARKER).unlink()
    assert VLMInference(model / "merged").kind == "model"
