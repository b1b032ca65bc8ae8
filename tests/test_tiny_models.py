"""The tiny offline models load through the real classes, run, and the detectors emit boxes."""
import hashlib
import time

import pytest
import torch
from PIL import Image

from fixtures.tiny_models import CLASSES, FAMILY_MODELS, build_all, sample_photos
from vlm_core import families
from vlm_core.prompts import PromptFormat


def test_yolo_loads_and_emits_boxes_on_a_photo(tiny_models):
    from ultralytics import YOLO
    model = YOLO(str(tiny_models["yolo"]))
    assert [model.names[i] for i in sorted(model.names)] == CLASSES
    counts = [len(r.boxes) for r in (model.predict(p, conf=0.3, imgsz=320, verbose=False)[0]
                                     for p in sample_photos()[:2])]
    assert all(c > 0 for c in counts), counts


def test_rtdetr_loads_and_emits_boxes_on_a_photo(tiny_models):
    from transformers import AutoImageProcessor, RTDetrForObjectDetection
    model = RTDetrForObjectDetection.from_pretrained(tiny_models["rtdetr_model"]).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_models["rtdetr_processor"])
    assert [model.config.id2label[i] for i in range(len(CLASSES))] == CLASSES
    for photo in sample_photos()[:2]:
        with torch.no_grad():
            out = model(**processor(images=photo, return_tensors="pt"))
        res = processor.post_process_object_detection(out, threshold=0.3, target_sizes=[photo.size[::-1]])[0]
        assert len(res["scores"]) > 0


def test_blip_loads_and_captions(tiny_models):
    from transformers import BlipForConditionalGeneration, BlipProcessor
    model = BlipForConditionalGeneration.from_pretrained(tiny_models["blip"]).eval()
    processor = BlipProcessor.from_pretrained(tiny_models["blip"])
    inputs = processor(images=[Image.new("RGB", (80, 60), (0, 128, 0))] * 2,
                       text=["a glass lying on"] * 2, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5)
    texts = processor.batch_decode(out, skip_special_tokens=True)
    assert len(texts) == 2 and all(t.startswith("a glass lying on") for t in texts)


def test_llava_loads_with_llava_15_prompt_format(tiny_models):
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(tiny_models["llava"]).eval()
    processor = AutoProcessor.from_pretrained(tiny_models["llava"])
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many objects are there?"}]}]
    prompt = processor.apply_chat_template(conv, add_generation_prompt=True)
    assert prompt == "USER: <image>\nHow many objects are there? ASSISTANT:"
    assert PromptFormat.from_chat_template(processor) == PromptFormat()
    inputs = processor(images=Image.new("RGB", (40, 40)), text=prompt, return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_index).sum() == model.config.image_seq_length
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == model.config.text_config.vocab_size
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    # The trained tokenizer round-trips the box text and prompts exactly.
    tok = processor.tokenizer
    text = "Please provide a short description for this region: [0.12, 0.34, 0.56, 0.78]"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        h.update(path.read_bytes())
    return h.hexdigest()


def test_builder_is_fast_and_deterministic(tmp_path, tiny_models):
    start = time.perf_counter()
    paths = build_all(tmp_path / "again", seed=0)
    assert time.perf_counter() - start < 30
    first = tiny_models["llava"].parent
    for name in ("llava", "blip", "rtdetr", *FAMILY_MODELS):
        assert _digest(first / name) == _digest(paths["yolo"].parent / name)
    tok_a = (first / "llava" / "tokenizer.json").read_text()
    assert tok_a == (paths["llava"] / "tokenizer.json").read_text()


EXPECTED_PROMPTS = {
    "llava_next": "[INST] <image>\nHow many objects are there? [/INST]",
    "qwen2_vl": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                 "<|vision_start|><|image_pad|><|vision_end|>How many objects are there?<|im_end|>\n"
                 "<|im_start|>assistant\n"),
    "qwen3_vl": ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many objects are there?"
                 "<|im_end|>\n<|im_start|>assistant\n"),
}
EXPECTED_PROMPTS["qwen2_5_vl"] = EXPECTED_PROMPTS["qwen2_vl"]
EXPECTED_PROMPTS["llava_onevision"] = ("<|im_start|>user <image>\nHow many objects are there?<|im_end|>"
                                      "<|im_start|>assistant\n")
# llava-hf/vip-llava-7b-hf's template (transformers tests/models/vipllava/test_processor_vipllava.py).
EXPECTED_PROMPTS["vip_llava"] = "###Human: <image>\nHow many objects are there?###Assistant:"


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_family_model_loads_runs_and_generates(name, tiny_models):
    """Each family's tiny model loads through its own class and AutoProcessor, takes images of
    several aspect ratios (as many image tokens as its processor says), runs and generates. ViP-LLaVA
    sees every image as one square view (padded to it by its frame, centre-cropped here) of a fixed count."""
    import transformers
    from transformers import AutoProcessor
    folder = tiny_models[name]
    family = families.detect_family(folder)
    assert family.name == name
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == family.processor_class
    model = getattr(transformers, family.model_class).from_pretrained(folder).eval()
    prompt = families.generation_prompt(processor, "How many objects are there?")
    assert prompt == EXPECTED_PROMPTS[name]
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    counts = set()
    for size in [(100, 30), (64, 64), (200, 100)]:
        inputs = processor(images=Image.new("RGB", size, (30, 120, 40)), text=prompt, return_tensors="pt")
        n_image_tokens = int((inputs["input_ids"] == image_token_id).sum())
        counts.add(n_image_tokens)
        with torch.no_grad():
            logits = model(**inputs).logits
        assert logits.shape[:2] == inputs["input_ids"].shape and logits.shape[-1] == len(processor.tokenizer)
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 3
    if family.pad_to_square:
        assert counts == {model.config.image_seq_length} == {16}
    else:
        assert len(counts) > 1, "image tokens should depend on the aspect ratio for these families"


def test_vip_llava_is_the_hub_checkpoint_in_small(tiny_models):
    """Its config keeps VipLlavaConfig's default feature layers, five distinct layers of the 12-layer tiny tower,
    concatenated into the projector; its processor counts image tokens as the hub's processor_config.json does
    (LlavaProcessor, CLS dropped), which is what the model fills: (32 / 8) ** 2."""
    from transformers import AutoProcessor, VipLlavaConfig, VipLlavaForConditionalGeneration
    folder = tiny_models["vip_llava"]
    model = VipLlavaForConditionalGeneration.from_pretrained(folder).eval()
    config = model.config
    assert config.model_type == "vipllava" and list(config.vision_feature_layers) == \
        list(VipLlavaConfig().vision_feature_layers) == [-2, -5, -8, -11, 6]
    depth = config.vision_config.num_hidden_layers + 1      # hidden states: the embeddings, then every layer
    assert depth == 13 and len({i % depth for i in config.vision_feature_layers}) == 5 and 0 not in \
        {i % depth for i in config.vision_feature_layers}
    assert model.model.multi_modal_projector.linear_1.in_features == 5 * config.vision_config.hidden_size
    processor = AutoProcessor.from_pretrained(folder)
    assert (processor.patch_size, processor.num_additional_image_tokens, processor.vision_feature_select_strategy) \
        == (8, 1, "default")
    assert families.image_token_count(processor, 640, 480) == config.image_seq_length == 16


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_family_tokenizer_round_trips_its_box_text_and_end_of_turn(name, tiny_models):
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(tiny_models[name])
    tok = processor.tokenizer
    frame = families.frame_for(tiny_models[name])
    box, width, height = [37.0, 12.5, 301.0, 420.0], 640, 480
    family = families.detect_family(tiny_models[name])
    eot = families.end_of_turn(family, tok)
    assert tok.convert_tokens_to_ids(eot) != tok.unk_token_id and len(tok(eot, add_special_tokens=False).input_ids) == 1
    for text in (frame.render_box(box, width, height), frame.render_answer(box, width, height, "glass")):
        text = f"Please provide a short description for this region: {text}"
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_an_older_build_without_the_families_is_not_taken_as_complete(tmp_path, tiny_models):
    import json

    from fixtures.tiny_models import _complete
    listing = {k: str(v) for k, v in tiny_models.items()}
    (tmp_path / "tiny_models.json").write_text(json.dumps(listing))
    assert _complete(tmp_path)
    older = {k: v for k, v in listing.items() if k not in FAMILY_MODELS}
    (tmp_path / "tiny_models.json").write_text(json.dumps(older))
    assert not _complete(tmp_path)
    (tmp_path / "tiny_models.json").write_text("{not json")
    assert not _complete(tmp_path)
