"""The tiny offline models load through the real classes, run, and the detectors emit boxes."""
import hashlib
import time

import torch
from PIL import Image

from models.make_tiny_models import CLASSES, build_all, sample_photos
from vlm_annotation.prompts import PromptFormat


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
    for name in ("llava", "blip", "rtdetr"):
        assert _digest(first / name) == _digest(paths["yolo"].parent / name)
    tok_a = (first / "llava" / "tokenizer.json").read_text()
    assert tok_a == (paths["llava"] / "tokenizer.json").read_text()
