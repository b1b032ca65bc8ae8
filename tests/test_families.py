"""Model families: detection, every family's box frame (render -> parse round trip), the frame
record and its mismatch refusal, and the chat layout helpers on the real tiny processors."""
import json
import random

import pytest

from fixtures.tiny_models import FAMILY_BUILDERS, build_llava
from vlm_core import boxes
from vlm_core import families as F
from vlm_core.prompts import PromptFormat

SIZES = [(640, 480), (480, 640), (500, 500), (1281, 719), (100, 30), (30, 100), (1920, 1080)]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """The tiny model of every family (LLaVA-1.5 included), built once for this module."""
    out = tmp_path_factory.mktemp("families")
    dirs = {name: build(out, 0) for name, build in FAMILY_BUILDERS.items()}
    dirs["llava"] = build_llava(out, 0)
    return dirs


def _random_boxes(width, height, n=25, seed=0):
    rng = random.Random(seed)
    out = [[0.0, 0.0, float(width), float(height)]]
    for _ in range(n):
        x1, x2 = sorted(rng.uniform(0, width) for _ in range(2))
        y1, y2 = sorted(rng.uniform(0, height) for _ in range(2))
        out.append([x1, y1, x2, y2])
    return out


# --------------------------------------------------------------------------- detection
@pytest.mark.parametrize("model_id,family", [
    ("llava-hf/llava-1.5-7b-hf", "llava"), ("llava-hf/llava-1.5-13b-hf", "llava"),
    ("liuhaotian/llava-v1.5-7b", "llava"),
    ("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next"), ("llava-hf/llava-v1.6-vicuna-7b-hf", "llava_next"),
    ("llava-hf/llama3-llava-next-8b-hf", "llava_next"),
    ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava_onevision"),
    ("llava-hf/vip-llava-7b-hf", "vip_llava"), ("llava-hf/vip-llava-13b-hf", "vip_llava"),
    ("mucai/vip-llava-7b", "vip_llava"), ("mucai/ViP-LLaVA-13b", "vip_llava"),
    ("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl"), ("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl"),
    ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl"), ("Qwen/Qwen2.5-VL-72B-Instruct", "qwen2_5_vl"),
    ("Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl"), ("Qwen/Qwen3-VL-8B-Thinking", "qwen3_vl"),
])
def test_hub_ids_are_recognised_offline(model_id, family):
    assert F.detect_family(model_id).name == family


def test_unknown_ids_and_folders_are_refused_in_one_line(tmp_path):
    with pytest.raises(F.FamilyError, match="cannot tell the model family of 'bert-base-uncased'") as err:
        F.detect_family("bert-base-uncased")
    assert "\n" not in str(err.value) and "qwen2_5_vl" in str(err.value)
    with pytest.raises(F.FamilyError, match="no config.json"):
        F.detect_family(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(F.FamilyError, match="model_type 'bert' is not a supported family"):
        F.detect_family(tmp_path)


def test_local_folders_are_detected_by_model_type_saved_frame_or_adapter_base(family_dirs, tmp_path):
    for name, folder in family_dirs.items():
        assert F.detect_family(folder).name == name
        assert F.detect_family(str(folder)).name == name
    # A trained model folder: the saved frame decides; a bare LoRA adapter: its base does.
    trained = tmp_path / "trained"
    trained.mkdir()
    F.frame_for_family("qwen2_vl").save(trained)
    assert F.detect_family(trained).name == "qwen2_vl"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(family_dirs["qwen3_vl"])}))
    assert F.detect_family(adapter).name == "qwen3_vl"


# --------------------------------------------------------------------------- reference values
def test_reference_values_from_the_official_conversion_notebook():
    """QwenLM/Qwen3-VL qwen-vl-finetune/tools/process_bbox.ipynb: box [146, 137, 615, 415] of a
    640x428 image (convert_to_qwen2vl_format / convert_to_qwen25vl_format, default settings)."""
    box, w, h = [146, 137, 615, 415], 640, 428
    assert F.frame_for_family("qwen2_vl").render_box(box, w, h) == "<|box_start|>(228,320),(961,970)<|box_end|>"
    assert F.smart_resize(428, 640, 28, 56 * 56, 28 * 28 * 16384) == (420, 644)
    q25 = F.frame_for_family("qwen2_5_vl")
    assert q25.render_answer(box, w, h, "bowl of carrots") == \
        '{"bbox_2d": [147, 134, 619, 407], "label": "bowl of carrots"}'
    assert q25.render_box(box, w, h) == "[147, 134, 619, 407]"
    q3 = F.frame_for_family("qwen3_vl")
    assert q3.render_answer(box, w, h, "bowl of carrots") == \
        '{"bbox_2d": [228, 320, 961, 970], "label": "bowl of carrots"}'
    assert q3.render_answer(box, w, h) == '{"bbox_2d": [228, 320, 961, 970]}'
    assert F.frame_for_family("llava_next").render_box(box, w, h) == "[0.23, 0.32, 0.96, 0.97]"


def _official_qwen2(box, w, h):
    """convert_to_qwen2vl_format of QwenLM/Qwen3-VL qwen-vl-finetune/tools/process_bbox.ipynb, as written there."""
    return [max(0, min(round(v / s * 1000), 1000)) for v, s in zip(box, (w, h, w, h))]


def _official_qwen25(box, h, w, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 16384):
    """convert_to_qwen25vl_format of the same notebook: scaled to the smart_resize'd image, clipped to new - 1."""
    new_h, new_w = F.smart_resize(h, w, factor, min_pixels, max_pixels)
    x1, y1, x2, y2 = (round(v * s) for v, s in zip(box, (new_w / w, new_h / h, new_w / w, new_h / h)))
    return [max(0, min(x1, new_w - 1)), max(0, min(y1, new_h - 1)), max(0, min(x2, new_w - 1)),
            max(0, min(y2, new_h - 1))]


@pytest.mark.parametrize("width,height", [(640, 428), (128, 80), (1000, 37), (37, 1000), (333, 333), (4000, 3000)])
def test_qwen_frames_equal_the_official_formulas_at_every_edge(width, height):
    """Boxes touching each border, 1-pixel boxes, whole-image boxes, on images that smart_resize changes: our
    Qwen2-VL / Qwen2.5-VL numbers equal the notebook's (QwenLM/Qwen3-VL, qwen-vl-finetune/tools/process_bbox.ipynb,
    convert_to_qwen2vl_format / convert_to_qwen25vl_format). Qwen2.5-VL clips at new_w - 1 / new_h - 1 (ours
    clipped at new_w / new_h before: 6 of 241 boxes of the demo differed by one)."""
    q2, q25 = F.frame_for_family("qwen2_vl"), F.frame_for_family("qwen2_5_vl")
    boxes = [[0, 0, width, height], [0, 0, 1, 1], [width - 1, height - 1, width, height],
             [0, height / 3, 1, height / 2], [width / 3, 0, width / 2, 1], [width - 1, 0, width, height],
             [0, height - 1, width, height]]
    for box in boxes:
        assert q25.to_frame(box, width, height) == _official_qwen25(box, height, width), box
        assert q2.to_frame(box, width, height) == _official_qwen2(box, width, height), box


def _edge_boxes(width, height):
    """Boxes on the image's edges, over them by the annotation file's tolerance (1 px), tiny, and on
    rounding ties of the padded square (x = k/200 of the side)."""
    side = max(width, height)
    return [[0, 0, width, height], [-1.0, -1.0, width + 1.0, height + 1.0], [0, 0, 1, 1],
            [width - 1, height - 1, width, height], [-0.4, 0.0, 0.6, height], [width / 2, height / 2, width, height],
            [side * 0.005, side * 0.015, side * 0.025, min(height, side * 0.035)],
            [width / 3, height / 7, width * 2 / 3, height * 6 / 7]]


@pytest.mark.parametrize("name", ["llava", "vip_llava"])
@pytest.mark.parametrize("width,height", SIZES)
def test_llava_frame_is_the_shared_box_text(name, width, height):
    """LLaVA-1.5's frame is a BoxFrame like the others, and writes exactly boxes.box_to_text's text
    (what conversion wrote for LLaVA-1.5 before every family went through its frame); ViP-LLaVA, trained on
    LLaVA-1.5's data mix with its images padded the same way, writes the same numbers."""
    frame = F.frame_for_family(name)
    for box in _random_boxes(width, height, n=200) + _edge_boxes(width, height):
        assert frame.render_box(box, width, height) == boxes.box_to_text(box, width, height), box
        assert frame.render_answer(box, width, height, "glass") == boxes.box_to_text(box, width, height)
        text = boxes.box_to_text(box, width, height)
        assert frame.parse_box(text, width, height) == boxes.text_to_box(text, width, height)
    # Known values: a wide image sits 50 px down in its 200x200 square; over the edge is clamped to the square.
    assert frame.render_box([0, 0, 200, 100], 200, 100) == "[0.00, 0.25, 1.00, 0.75]"
    assert frame.render_box([-1, -1, 201, 101], 200, 100) == "[0.00, 0.24, 1.00, 0.76]"
    # Ties round as the float formats: 1/200 = 0.005000..01 -> 0.01, 3/200 = 0.014999.. -> 0.01.
    assert frame.render_box([1, 1, 3, 3], 200, 100) == "[0.01, 0.26, 0.01, 0.27]"


def test_frames_prepare_the_image_as_the_model_saw_it_in_training():
    from PIL import Image
    wide = Image.new("RGB", (60, 20), (255, 0, 0))
    mean = (0.5, 0.25, 0.0)
    padded = F.frame_for_family("llava").prepare_image(wide, mean)
    assert padded.size == (60, 60) and padded.tobytes() == boxes.pad_to_square(wide, mean).tobytes()
    vip = F.frame_for_family("vip_llava").prepare_image(wide, mean)
    assert vip.size == (60, 60) and vip.tobytes() == padded.tobytes()
    for name in ("llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        assert F.frame_for_family(name).prepare_image(wide, mean) is wide, name
    assert [n for n, f in F.FAMILIES.items() if f.pad_to_square] == ["llava", "vip_llava"]


def test_smart_resize_equals_the_processors_own():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    rng = random.Random(0)
    sizes = [(28, 28), (30, 100), (100, 30), (428, 640), (4000, 3000), (1, 150), (56, 56)]
    sizes += [(rng.randint(10, 5000), rng.randint(10, 5000)) for _ in range(200)]
    for factor, lo, hi in [(28, 3136, 12845056), (32, 65536, 16777216), (28, 3136, 12544), (32, 4096, 16384)]:
        for h, w in sizes:
            try:
                expected = smart_resize(h, w, factor, lo, hi)
            except ValueError:  # aspect ratio above 200: refused by both
                with pytest.raises(F.FamilyError, match="aspect ratio above 200"):
                    F.smart_resize(h, w, factor, lo, hi)
                continue
            assert F.smart_resize(h, w, factor, lo, hi) == expected, (h, w, factor)


# --------------------------------------------------------------------------- round trips
FRAMES = {
    "llava": F.frame_for_family("llava"),
    "llava_next": F.frame_for_family("llava_next"),
    "llava_onevision": F.frame_for_family("llava_onevision"),
    "vip_llava": F.frame_for_family("vip_llava"),
    "qwen2_vl": F.frame_for_family("qwen2_vl"),
    "qwen2_5_vl": F.frame_for_family("qwen2_5_vl"),
    "qwen2_5_vl_small": F.frame_for_family("qwen2_5_vl", {"factor": 28, "min_pixels": 3136, "max_pixels": 12544}),
    "qwen3_vl": F.frame_for_family("qwen3_vl"),
}


def _step(frame, width, height):
    """Pixels of the original image per unit of the last digit the frame writes (x, y)."""
    if frame.kind == "padded_square":
        side = max(width, height)
        return side / 10 ** frame.decimals, side / 10 ** frame.decimals
    if frame.kind == "unit":
        return width / 10 ** frame.decimals, height / 10 ** frame.decimals
    fw, fh = frame.frame_size(width, height)
    return width / fw, height / fh


@pytest.mark.parametrize("name", sorted(FRAMES))
@pytest.mark.parametrize("width,height", SIZES)
def test_box_text_box_round_trip_within_half_a_step(name, width, height):
    """pixel box -> question text and answer text -> pixel box, within half of the frame's rounding step
    (one pixel or less wherever the frame is at least half as fine as the image)."""
    frame = FRAMES[name]
    sx, sy = _step(frame, width, height)
    for box in _random_boxes(width, height):
        for text in (frame.render_box(box, width, height), frame.render_answer(box, width, height, "can")):
            back = frame.parse_box(text, width, height)
            for i, (a, b) in enumerate(zip(box, back)):
                step, side = (sx, width) if i % 2 == 0 else (sy, height)
                tol = step / 2 + 1e-6
                if frame.kind == "resized_pixels" and a > side - 1.5 * step:
                    tol = 1.5 * step + 1e-6  # the resized image's last pixel is new_w - 1 (the official clip)
                assert abs(a - b) <= tol, (text, box, back)
                if tol <= 1.0:
                    assert abs(a - b) <= 1.0


@pytest.mark.parametrize("name,width,height", [
    ("llava", 200, 120), ("llava", 90, 160), ("llava_next", 150, 200), ("llava_onevision", 200, 80),
    ("vip_llava", 200, 120), ("vip_llava", 90, 160),
    ("qwen2_vl", 640, 480), ("qwen2_vl", 1920, 1080), ("qwen3_vl", 1281, 719), ("qwen3_vl", 30, 100),
    ("qwen2_5_vl", 640, 480), ("qwen2_5_vl", 1281, 719), ("qwen2_5_vl", 100, 30), ("qwen2_5_vl", 30, 100),
])
def test_round_trip_within_one_pixel(name, width, height):
    frame = FRAMES[name]
    # Qwen2.5-VL's last resized pixel is new_w - 1 (the official clip): a box at the far edge comes back up to
    # one resized pixel short.
    sx, sy = _step(frame, width, height) if frame.kind == "resized_pixels" else (1.0, 1.0)
    for box in _random_boxes(width, height, n=50, seed=width):
        back = frame.parse_box(frame.render_answer(box, width, height, "glass"), width, height)
        for i, (a, b) in enumerate(zip(box, back)):
            assert abs(a - b) <= max(1.0, sx if i % 2 == 0 else sy) + 1e-6, (box, back)


def test_qwen2_5_frame_follows_smart_resize_where_it_changes_the_aspect_ratio():
    frame = FRAMES["qwen2_5_vl"]
    # 100x30 becomes 112x28: x is stretched by 1.12, y squeezed by 0.93.
    assert frame.frame_size(100, 30) == (112.0, 28.0)
    assert 112 / 28 != pytest.approx(100 / 30, abs=0.5)
    # The resized image's pixels are 0..111 and 0..27 (the official clip at new_w - 1, new_h - 1).
    assert frame.render_box([0, 0, 100, 30], 100, 30) == "[0, 0, 111, 27]"
    assert frame.render_box([50, 15, 75, 30], 100, 30) == "[56, 14, 84, 27]"
    assert frame.parse_box("[56, 14, 84, 28]", 100, 30) == [50.0, 15.0, 75.0, 30.0]
    # A processor with a smaller max_pixels writes other numbers for the same box.
    small = FRAMES["qwen2_5_vl_small"]
    assert small.frame_size(640, 480) == (112.0, 84.0)
    assert small.render_box([320, 240, 640, 480], 640, 480) == "[56, 42, 111, 83]"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_frame_matches_what_the_real_processor_does_to_the_image(family, family_dirs):
    from PIL import Image
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(family_dirs[family])
    frame = F.frame_from_processor(family, processor)
    settings = F.resize_settings(processor.image_processor)
    patch = processor.image_processor.patch_size
    for width, height in [(100, 30), (30, 100), (640, 480), (77, 77), (300, 41)]:
        grid = processor.image_processor(images=Image.new("RGB", (width, height)), return_tensors="pt")
        _, rows, cols = grid["image_grid_thw"][0].tolist()
        resized = F.smart_resize(height, width, **settings)
        assert resized == (rows * patch, cols * patch)
        if family == "qwen2_5_vl":
            assert frame.frame_size(width, height) == (cols * patch, rows * patch)


# --------------------------------------------------------------------------- parsing
def test_parse_reads_every_notation_and_rejects_inverted_or_missing_boxes():
    q2, q3 = FRAMES["qwen2_vl"], FRAMES["qwen3_vl"]
    # Qwen2-VL decoded with skip_special_tokens=True loses the box tokens: still a box.
    assert q2.parse_box("<|box_start|>(100,200),(500,1000)<|box_end|>", 1000, 500) == [100.0, 100.0, 500.0, 500.0]
    assert q2.parse_box("(100,200),(500,1000)", 1000, 500) == [100.0, 100.0, 500.0, 500.0]
    assert q2.parse_box("<|object_ref_start|>a can<|object_ref_end|>(100, 200), (500, 1000)", 1000, 500) == \
        [100.0, 100.0, 500.0, 500.0]
    fenced = '```json\n[\n\t{"bbox_2d": [100, 200, 500, 1000], "label": "can"},\n' \
             '\t{"bbox_2d": [0, 0, 10, 10], "label": "glass"}\n]\n```'
    assert q3.parse_box(fenced, 1000, 500) == [100.0, 100.0, 500.0, 500.0]
    assert [vals for _, vals in boxes.find_boxes(fenced)] == [[100, 200, 500, 1000], [0, 0, 10, 10]]
    assert q3.parse_box("[100, 200, 500, 1000]", 1000, 500) == [100.0, 100.0, 500.0, 500.0]
    assert q3.parse_box('{"bbox_2d": [500, 200, 100, 1000]}', 1000, 500) is None
    assert [vals for _, vals in boxes.find_boxes('{"bbox_2d": [500, 200, 100, 1000]} [0, 0, 1000, 1000]')] == \
        [[500, 200, 100, 1000], [0, 0, 1000, 1000]]
    assert q3.parse_box("There is no box here.", 1000, 500) is None
    assert q3.parse_box("", 1000, 500) is None
    # Out-of-frame numbers come back clipped to the image.
    assert q3.parse_box("[0, 0, 1200, 1000]", 1000, 500) == [0.0, 0.0, 1000.0, 500.0]


def test_first_box_gives_frame_numbers_whose_iou_is_the_pixel_iou():
    assert boxes.first_box('{"bbox_2d": [1, 2, 3, 4]}') == [1.0, 2.0, 3.0, 4.0]
    assert boxes.first_box("<|box_start|>(1,2),(3,4)<|box_end|> and [5, 6, 7, 8]") == [1.0, 2.0, 3.0, 4.0]
    assert boxes.first_box("[0.5, 0.2, 0.1, 0.9]") is None and boxes.first_box("none") is None
    rng = random.Random(3)
    for name, frame in FRAMES.items():
        for width, height in SIZES:
            a, b = _random_boxes(width, height, n=2, seed=rng.randrange(1000))[1:]
            ta, tb = frame.render_answer(a, width, height), frame.render_answer(b, width, height)
            pixel_iou = boxes.iou(frame.parse_box(ta, width, height), frame.parse_box(tb, width, height))
            assert boxes.iou(boxes.first_box(ta), boxes.first_box(tb)) == pytest.approx(pixel_iou, abs=1e-9), name


@pytest.mark.parametrize("name", ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision",
                                  "vip_llava"])
def test_image_token_count_is_what_the_processor_does(name, family_dirs):
    from PIL import Image
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(family_dirs[name])
    token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    for width, height in [(100, 30), (30, 100), (640, 480), (77, 77), (300, 41)]:
        ids = processor(text=[processor.image_token], images=[Image.new("RGB", (width, height))],
                        return_tensors="pt")["input_ids"]
        assert F.image_token_count(processor, width, height) == int((ids == token_id).sum()), (width, height)


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen3_vl", "llava_next", "vip_llava"])
def test_decode_answer_keeps_the_box_tokens_of_qwen2_vl_only(name, family_dirs):
    from transformers import AutoProcessor
    tok = AutoProcessor.from_pretrained(family_dirs[name]).tokenizer
    family = F.detect_family(family_dirs[name])
    eot = F.end_of_turn(family, tok)
    answer = F.frame_for_family(name).render_answer([10, 20, 30, 40], 100, 100, "can")
    ids = tok(answer + eot + (tok.pad_token or ""), add_special_tokens=False).input_ids
    assert F.decode_answer(tok, family, ids) == answer
    if name == "qwen2_vl":  # the plain decode would lose the box tokens
        assert tok.decode(ids, skip_special_tokens=True) == "(100,200),(300,400)"


# --------------------------------------------------------------------------- record and refusal
def test_frame_dict_round_trips_and_is_validated(tmp_path):
    for frame in FRAMES.values():
        data = json.loads(json.dumps(frame.to_dict()))
        assert F.BoxFrame.from_dict(data) == frame
    assert FRAMES["qwen2_5_vl"].to_dict() == {"family": "qwen2_5_vl", "kind": "resized_pixels", "factor": 28,
                                              "min_pixels": 3136, "max_pixels": 12845056}
    assert FRAMES["llava"].to_dict() == {"family": "llava", "kind": "padded_square", "decimals": 2}
    assert FRAMES["vip_llava"].to_dict() == {"family": "vip_llava", "kind": "padded_square", "decimals": 2}
    bad = [({"family": "qwen2_vl", "kind": "norm1000", "extra": 1}, "unknown field 'extra'"),
           ({"kind": "norm1000"}, "field 'family' is missing"),
           ({"family": "gpt", "kind": "norm1000"}, "unknown model family 'gpt'"),
           ({"family": "qwen2_vl", "kind": "unit", "decimals": 2}, "is not the qwen2_vl frame"),
           ({"family": "llava", "kind": "padded_square", "decimals": 3}, "is not the llava frame"),
           ({"family": "qwen2_5_vl", "kind": "resized_pixels", "factor": 28}, "needs positive integers"),
           ({"family": "qwen2_5_vl", "kind": "resized_pixels", "factor": 28, "min_pixels": 9,
             "max_pixels": 3}, "min_pixels 9 > max_pixels 3"),
           ({"family": "qwen2_5_vl", "kind": "resized_pixels", "factor": "28", "min_pixels": 1,
             "max_pixels": 3}, "field 'factor' must be an integer"),
           ([1, 2], "must be an object")]
    for data, message in bad:
        with pytest.raises(F.FamilyError, match=message):
            F.BoxFrame.from_dict(data, where="train.json[0].box_frame")
    FRAMES["qwen2_5_vl_small"].save(tmp_path)
    assert F.BoxFrame.load(tmp_path) == FRAMES["qwen2_5_vl_small"]
    assert F.BoxFrame.load(tmp_path / "nowhere") is None


def test_mismatched_frames_are_refused_naming_what_to_rerun():
    base = "Qwen/Qwen2.5-VL-3B-Instruct"
    F.check_frame(FRAMES["qwen2_5_vl"], F.frame_for(base), "train.json", base)
    with pytest.raises(F.FamilyError) as err:
        F.check_frame(FRAMES["qwen2_vl"], F.frame_for(base), "train.json", base)
    msg = str(err.value)
    assert msg.startswith("train.json: boxes were rendered for qwen2_vl [integers 0..1000 of the original image] but")
    assert msg.endswith(f"rerun convert_to_llava_format.py --base_model {base}") and "\n" not in msg
    with pytest.raises(F.FamilyError, match=r"max_pixels 12544\)\] but .* max_pixels 12845056\)\]; rerun"):
        F.check_frame(FRAMES["qwen2_5_vl_small"], FRAMES["qwen2_5_vl"], "train.json", base)
    # ViP-LLaVA writes LLaVA-1.5's numbers, but data converted for one family is still refused by the other.
    with pytest.raises(F.FamilyError, match=r"rendered for llava \[0..1 of the image padded to a square, 2 decimals\] "
                                            r"but llava-hf/vip-llava-7b-hf uses vip_llava \[0..1 of the image padded"):
        F.check_frame(FRAMES["llava"], F.frame_for("llava-hf/vip-llava-7b-hf"), "train.json", "llava-hf/vip-llava-7b-hf")
    # A record without a frame predates families: it was rendered for LLaVA-1.5.
    assert F.frame_of_record({"id": "a"}) == FRAMES["llava"]
    assert F.frame_of_record({"box_frame": FRAMES["qwen3_vl"].to_dict()}) == FRAMES["qwen3_vl"]
    with pytest.raises(F.FamilyError, match=r"train.json\[3\].box_frame: unknown model family"):
        F.frame_of_record({"box_frame": {"family": "x", "kind": "unit"}}, where="train.json[3]")


def test_frame_for_reads_the_processor_settings_of_a_folder(family_dirs, tmp_path):
    # A hub id never downloaded: the official checkpoint's settings.
    assert F.frame_for("Qwen/Qwen2.5-VL-7B-Instruct") == FRAMES["qwen2_5_vl"]
    assert F.frame_for("llava-hf/llava-1.5-7b-hf") == FRAMES["llava"]
    assert F.frame_for("llava-hf/vip-llava-7b-hf") == FRAMES["vip_llava"]
    assert F.frame_for(family_dirs["vip_llava"]) == FRAMES["vip_llava"]
    # A local folder: its processor's (the tiny one allows at most 112x112 px).
    assert F.frame_for(family_dirs["qwen2_5_vl"]) == FRAMES["qwen2_5_vl_small"]
    assert F.frame_for(family_dirs["qwen3_vl"]) == FRAMES["qwen3_vl"]
    # A legacy preprocessor_config.json with min_pixels/max_pixels, as older hub checkpoints ship.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (legacy / "preprocessor_config.json").write_text(json.dumps(
        {"min_pixels": 3136, "max_pixels": 1003520, "patch_size": 14, "merge_size": 2}))
    assert F.frame_for(legacy).max_pixels == 1003520
    # A trained model: the frame it saved wins over its processor.
    FRAMES["qwen2_5_vl"].save(legacy)
    assert F.frame_for(legacy) == FRAMES["qwen2_5_vl"]


# --------------------------------------------------------------------------- chat layout
TURNS = [("How many objects are there?", "There are 2 objects in this image."), ("Q2?", "A2.")]
EXPECTED_SEGMENTS = {
    "llava": [("USER: <image>\nHow many objects are there? ASSISTANT:", False),
              (" There are 2 objects in this image.</s>", True), ("USER: Q2? ASSISTANT:", False),
              (" A2.</s>", True)],
    "llava_next": [("[INST] <image>\nHow many objects are there? [/INST]", False),
                   (" There are 2 objects in this image.</s>", True), (" [INST] Q2? [/INST]", False),
                   (" A2.</s>", True)],
    "qwen2_vl": [("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                  "<|vision_start|><|image_pad|><|vision_end|>How many objects are there?<|im_end|>\n"
                  "<|im_start|>assistant\n", False),
                 ("There are 2 objects in this image.<|im_end|>", True),
                 ("\n<|im_start|>user\nQ2?<|im_end|>\n<|im_start|>assistant\n", False), ("A2.<|im_end|>", True)],
    "qwen3_vl": [("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many objects are there?"
                  "<|im_end|>\n<|im_start|>assistant\n", False),
                 ("There are 2 objects in this image.<|im_end|>", True),
                 ("\n<|im_start|>user\nQ2?<|im_end|>\n<|im_start|>assistant\n", False), ("A2.<|im_end|>", True)],
}
EXPECTED_SEGMENTS["qwen2_5_vl"] = EXPECTED_SEGMENTS["qwen2_vl"]
# Its template writes no end of turn and asks with "###Assistant:": the answer's space and EOS are supervised,
# and the next "###Human: " starts the next prompt.
EXPECTED_SEGMENTS["vip_llava"] = [
    ("###Human: <image>\nHow many objects are there?###Assistant:", False),
    (" There are 2 objects in this image.</s>", True), ("###Human: Q2?###Assistant:", False), (" A2.</s>", True)]
# Its template writes "assistant \n" before a stored answer but asks with "assistant\n": the
# answer is trained after the prompt inference sends.
EXPECTED_SEGMENTS["llava_onevision"] = [
    ("<|im_start|>user <image>\nHow many objects are there?<|im_end|><|im_start|>assistant\n", False),
    ("There are 2 objects in this image.<|im_end|>", True),
    ("<|im_start|>user \nQ2?<|im_end|><|im_start|>assistant\n", False), ("A2.<|im_end|>", True)]


@pytest.mark.parametrize("name", sorted(EXPECTED_SEGMENTS))
def test_conversation_segments_supervise_answers_through_the_end_of_turn(name, family_dirs):
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(family_dirs[name])
    family = F.detect_family(family_dirs[name])
    segments = F.conversation_segments(processor, family, TURNS)
    assert segments == EXPECTED_SEGMENTS[name]
    assert segments[0][0] == F.generation_prompt(processor, TURNS[0][0])
    # Inference asks a question the way the first segment lays it out.
    assert segments[0][0] == F.question_prompt(family, processor, PromptFormat(), TURNS[0][0])
    eot = F.end_of_turn(family, processor.tokenizer)
    assert all(text.endswith(eot) for text, supervised in segments if supervised)
    # The image placeholder the template writes is the family's, once, in the first prompt.
    assert segments[0][0].count(family.image_placeholder) == 1
    assert sum(text.count(family.image_placeholder) for text, _ in segments) == 1
    # With a system prompt, it comes first and the answers stay the same.
    with_system = F.conversation_segments(processor, family, TURNS, system="Answer briefly.")
    assert "Answer briefly." in with_system[0][0]
    assert [t for t, s in with_system if s] == [t for t, s in segments if s]


def test_vip_llava_asks_as_its_checkpoint_and_model_card_do(family_dirs):
    """The prompt transformers' tests/models/vipllava/test_processor_vipllava.py expects from llava-hf/vip-llava-7b-hf's
    chat template, and the model card's recommended prompt: its system prompt as bare text before "###Human: "."""
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(family_dirs["vip_llava"])
    question = "What is shown in this image?"
    assert F.generation_prompt(processor, question) == "###Human: <image>\nWhat is shown in this image?###Assistant:"
    system = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the human's questions.")
    assert F.generation_prompt(processor, question, system=system) == \
        system + "###Human: <image>\nWhat is shown in this image?###Assistant:"
    # The template writes no end of turn: an answer ends with the tokenizer's EOS, as the checkpoint's (id 2, </s>).
    family = F.detect_family(family_dirs["vip_llava"])
    assert family.end_of_turn is None and F.end_of_turn(family, processor.tokenizer) == "</s>"
    assert not family.uses_prompt_format and family.image_placeholder == "<image>\n"


@pytest.mark.parametrize("name", ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision",
                                  "vip_llava"])
def test_lora_regex_hits_only_the_language_model(name, family_dirs):
    import re

    import torch
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(family_dirs[name])
    family = F.detect_family(family_dirs[name])
    assert type(model).__name__ == family.model_class
    names = [n for n, _ in model.named_modules()]
    hits = [n for n in names if re.fullmatch(family.lora_target_regex, n)]
    assert hits and all(F.module_role(family, n) == "language" for n in hits)
    assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in hits)
    # Every prefix names a real module (or parameter: LLaVA-NeXT's image_newline), and every Linear of
    # the vision tower is outside the regex.
    params = [n for n, _ in model.named_parameters()]
    for prefix in family.vision_prefixes + family.projector_prefixes:
        assert prefix in names or prefix in params, prefix
    vision_linears = [n for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and F.module_role(family, n) != "language"]
    assert vision_linears and not set(vision_linears) & set(hits)
    assert F.module_role(family, "base_model.model." + vision_linears[0]) == F.module_role(family, vision_linears[0])
    assert F.module_role(family, "module.base_model.model." + hits[0]) == "language"
