"""Issue 26: every family's box frame (vlm_core/families.py) against the official code it follows, at the edges.

Each reference below is the official formula copied as written (the source file and the commit it was read
at are named), and every family's convert -> parse is checked to equal the official convert -> parse exactly
(not within a tolerance) on boxes touching each border, 1-pixel boxes at each corner, whole-image boxes,
boxes over the edge by the annotation file's tolerance, extreme aspect ratios (2000x50, 50x2000, 3x600) and
images that smart_resize changes, plus every integer x of a few widths (the rounding ties).

Sources (fetched snapshots):
- QwenLM/Qwen3-VL @ 96588727e44c78b25ba03ea03b8e12f7e64fd0da:
  ``qwen-vl-finetune/tools/process_bbox.ipynb`` (last changed in 271ad065fcd8a7d45453217ae3e7583dc5189707):
  ``convert_to_qwen2vl_format``, ``smart_resize`` (its copy), ``convert_to_qwen25vl_format``;
  ``evaluation/ODinW-13/run_odinw.py`` (f8dca99056bb6352cf6ab36d4ea1848a09c54b5b): answers back to pixels,
  ``/ 1000 * img_w`` (relative, Qwen2-VL / Qwen3-VL) and ``/ resized_w * img_w`` (absolute, Qwen2.5-VL).
- huggingface/transformers 5.25.0 (installed) ``models/qwen2_vl/image_processing_qwen2_vl.py`` ``smart_resize``:
  what the processor does to the image, imported rather than copied.
- haotian-liu/LLaVA @ c121f0432da27facab705978f83c4ada465e46fd ``llava/mm_utils.py`` ``expand2square`` and
  WisconsinAIVision/ViP-LLaVA @ 77079b1e1990472598f1f8a6bb3f7f470100d191 ``llava/mm_utils.py`` ``expand2square``
  (identical): where the image is pasted in its padded square; boxes are 0..1 of that square, 2 decimals
  (haotian-liu/LLaVA issue #606). Neither repository converts boxes in code: the reference is the paste offset.
- EvolvingLMMs-Lab/lmms-eval @ 75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3 ``lmms_eval/tasks/refcoco/utils_rec.py``
  (220ad5d0e6dff5d98d6f1cbcd2109ecd1ce52088) ``refcoco_bbox_rec_preprocess_dataset``: LLaVA-NeXT / OneVision
  boxes as ``x / image_width`` of the original image (the toolkit writes them with 2 decimals).

What differed, and was fixed in vlm_core/families.py: Qwen2.5-VL multiplied ``x * new_w / w`` where the
notebook computes the scale first, ``x * (new_w / w)``; on a rounding tie the two fall on either side of .5
(x 85 of a 136-wide image resized to 140: ours wrote 88, the notebook 87). Parsing now divides in the
official order too, so a parsed box equals run_odinw.py's to the last bit. Where we deliberately differ: the
notebook's own ``smart_resize`` copy refuses a side under 28 pixels; the processor (transformers) resizes such
images, and the frame follows the processor, since that is the image the model sees.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as processor_smart_resize

from vlm_core import families as F


# --------------------------------------------------------------------------- the official code, as written
def convert_to_qwen2vl_format(bbox, h, w):
    """QwenLM/Qwen3-VL qwen-vl-finetune/tools/process_bbox.ipynb (Qwen2-VL; the relative 0..1000 frame)."""
    x1, y1, x2, y2 = bbox
    x1_new = round(x1 / w * 1000)
    y1_new = round(y1 / h * 1000)
    x2_new = round(x2 / w * 1000)
    y2_new = round(y2 / h * 1000)

    x1_new = max(0, min(x1_new, 1000))
    y1_new = max(0, min(y1_new, 1000))
    x2_new = max(0, min(x2_new, 1000))
    y2_new = max(0, min(y2_new, 1000))

    return [x1_new, y1_new, x2_new, y2_new]


def notebook_smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280):
    """The notebook's copy of Qwen2.5-VL's resize function (older than transformers': refuses sides < factor)."""
    if height < factor or width < factor:
        raise ValueError(f"height:{height} or width:{width} must be larger than factor:{factor}")
    elif max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def convert_to_qwen25vl_format(bbox, orig_height, orig_width, factor=28, min_pixels=56 * 56,
                               max_pixels=14 * 14 * 4 * 1280, smart_resize=notebook_smart_resize):
    """The notebook's Qwen2.5-VL conversion (``smart_resize`` swappable for the processor's own)."""
    new_height, new_width = smart_resize(orig_height, orig_width, factor, min_pixels, max_pixels)
    scale_w = new_width / orig_width
    scale_h = new_height / orig_height

    x1, y1, x2, y2 = bbox
    x1_new = round(x1 * scale_w)
    y1_new = round(y1 * scale_h)
    x2_new = round(x2 * scale_w)
    y2_new = round(y2 * scale_h)

    x1_new = max(0, min(x1_new, new_width - 1))
    y1_new = max(0, min(y1_new, new_height - 1))
    x2_new = max(0, min(x2_new, new_width - 1))
    y2_new = max(0, min(y2_new, new_height - 1))

    return [x1_new, y1_new, x2_new, y2_new]


def odinw_to_pixels(pred_bboxes, img_w, img_h, resized_w=None, resized_h=None):
    """QwenLM/Qwen3-VL evaluation/ODinW-13/run_odinw.py: answers back to the original image (``is_rel`` when no
    resized size is given)."""
    if resized_w is None:
        return (np.array(pred_bboxes).reshape(-1, 4) / 1000 * np.array([img_w, img_h, img_w, img_h])).tolist()
    return (np.array(pred_bboxes).reshape(-1, 4) / np.array([resized_w, resized_h, resized_w, resized_h])
            * np.array([img_w, img_h, img_w, img_h])).tolist()


def expand2square_offset(width, height):
    """haotian-liu/LLaVA (and ViP-LLaVA) llava/mm_utils.py expand2square: the square's side and where the
    image is pasted in it (``result.paste(pil_img, (0, (width - height) // 2))`` and its mirror)."""
    if width == height:
        return width, 0, 0
    elif width > height:
        return width, 0, (width - height) // 2
    else:
        return height, (height - width) // 2, 0


def llava_square_box(bbox, width, height, decimals=2):
    """LLaVA-1.5 / ViP-LLaVA: 0..1 of the padded square (issue #606), 2 decimals as its instruction data."""
    side, dx, dy = expand2square_offset(width, height)
    x1, y1, x2, y2 = bbox
    return [round(min(max(v, 0.0), 1.0), decimals)
            for v in ((x1 + dx) / side, (y1 + dy) / side, (x2 + dx) / side, (y2 + dy) / side)]


def llava_square_to_pixels(vals, width, height):
    """The inverse: the square's 0..1 back to the image's pixels, clipped to the image."""
    side, dx, dy = expand2square_offset(width, height)
    x1, y1, x2, y2 = vals[0] * side - dx, vals[1] * side - dy, vals[2] * side - dx, vals[3] * side - dy
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]


def lmms_eval_unit_box(bbox, width, height, decimals=2):
    """lmms-eval refcoco utils_rec.py: ``x / image_width`` of the original image (clamped, 2 decimals here)."""
    x1, y1, x2, y2 = bbox
    return [round(min(max(v, 0.0), 1.0), decimals) for v in (x1 / width, y1 / height, x2 / width, y2 / height)]


# --------------------------------------------------------------------------- the cases
SIZES = [(2000, 50), (50, 2000), (3, 600), (600, 3), (640, 428), (136, 50), (1, 1), (28, 28), (29, 57),
         (333, 333), (1920, 1080), (4000, 3000), (20, 2000), (1281, 719)]


def edge_boxes(w, h):
    """Whole image; touching each border; 1-pixel boxes at each corner; over the edge by 1 pixel; thin strips."""
    return [[0, 0, w, h],
            [0, h / 4, w / 2, h / 2], [w / 4, 0, w / 2, h / 2], [w / 2, h / 4, w, h / 2], [w / 4, h / 2, w / 2, h],
            [0, 0, 1, 1], [w - 1, 0, w, 1], [0, h - 1, 1, h], [w - 1, h - 1, w, h],
            [-1.0, -1.0, w + 1.0, h + 1.0], [0, 0, w, 1], [0, h - 1, w, h], [0, 0, 1, h], [w - 1, 0, w, h],
            [w / 3, h / 7, w * 2 / 3, h * 6 / 7]]


def sweep_boxes(w, h):
    """Every integer x (and y) of the image: where rounding ties sit."""
    return [[x, min(x, h - 1), x, min(x + 1, h)] for x in range(0, w + 1)]


def qwen25_frame(settings):
    return F.frame_for_family("qwen2_5_vl", settings)


QWEN25_SETTINGS = [F.FAMILIES["qwen2_5_vl"].default_resize,                         # the checkpoint's
                   {"factor": 28, "min_pixels": 56 * 56, "max_pixels": 14 * 14 * 4 * 1280},  # the notebook's default
                   {"factor": 28, "min_pixels": 3136, "max_pixels": 12544}]                # a small processor


def _official(name, box, w, h, settings=None):
    """(official frame numbers, official pixel box parsed back from them) for family ``name``."""
    if name in ("llava", "vip_llava"):
        vals = llava_square_box(box, w, h)
        return vals, llava_square_to_pixels(vals, w, h)
    if name in ("llava_next", "llava_onevision"):
        vals = lmms_eval_unit_box(box, w, h)
        return vals, [min(max(v * s, 0.0), s) for v, s in zip(vals, (w, h, w, h))]
    if name in ("qwen2_vl", "qwen3_vl"):
        vals = convert_to_qwen2vl_format(box, h, w)
        return vals, odinw_to_pixels([vals], w, h)[0]
    new_h, new_w = processor_smart_resize(h, w, **settings)
    vals = convert_to_qwen25vl_format(box, h, w, smart_resize=processor_smart_resize, **settings)
    return vals, odinw_to_pixels([vals], w, h, new_w, new_h)[0]


def _assert_equal_to_official(frame, name, boxes, w, h, settings=None):
    for box in boxes:
        vals, back = _official(name, box, w, h, settings)
        assert frame.to_frame(box, w, h) == vals, (name, w, h, box)
        assert frame.from_frame(frame.to_frame(box, w, h), w, h) == back, (name, w, h, box)
        # Through the text the model reads and writes, too.
        for text in (frame.render_box(box, w, h), frame.render_answer(box, w, h, "can")):
            assert frame.parse_box(text, w, h) == back, (name, w, h, text)


@pytest.mark.parametrize("name", ["llava", "vip_llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen3_vl"])
@pytest.mark.parametrize("width,height", SIZES)
def test_fixed_frames_equal_the_official_conversion_and_parse(name, width, height):
    frame = F.frame_for_family(name)
    _assert_equal_to_official(frame, name, edge_boxes(width, height), width, height)


@pytest.mark.parametrize("settings", QWEN25_SETTINGS, ids=["checkpoint", "notebook", "small"])
@pytest.mark.parametrize("width,height", [s for s in SIZES if max(s) / min(s) <= 200])
def test_qwen2_5_frame_equals_the_official_conversion_and_parse(settings, width, height):
    _assert_equal_to_official(qwen25_frame(settings), "qwen2_5_vl", edge_boxes(width, height), width, height,
                              settings)


@pytest.mark.parametrize("width,height", [(136, 50), (640, 428), (97, 300), (1000, 37)])
def test_every_integer_coordinate_rounds_as_the_official_code(width, height):
    """The rounding ties: the old Qwen2.5-VL order (x * new_w / w) differed from the notebook here."""
    for name in ("llava", "llava_next", "qwen2_vl"):
        _assert_equal_to_official(F.frame_for_family(name), name, sweep_boxes(width, height), width, height)
    for settings in QWEN25_SETTINGS:
        _assert_equal_to_official(qwen25_frame(settings), "qwen2_5_vl", sweep_boxes(width, height), width, height,
                                  settings)


def test_the_rounding_tie_that_differed():
    """136x50 -> smart_resize 140x56; x = 85 is 85 * 140 / 136 = 87.5 exactly, but 85 * (140 / 136) is
    87.49999999999999: the notebook writes 87, and so do we now (we wrote 88 before)."""
    frame = qwen25_frame(None)
    assert processor_smart_resize(50, 136, 28, 3136, 28 * 28 * 16384) == (56, 140)
    assert 85 * 140 / 136 == 87.5 and round(85 * (140 / 136)) == 87
    assert frame.to_frame([85, 0, 85, 50], 136, 50) == [87, 0, 87, 55]
    assert convert_to_qwen25vl_format([85, 0, 85, 50], 50, 136, max_pixels=28 * 28 * 16384) == [87, 0, 87, 55]


def test_smart_resize_is_the_processors_where_the_notebook_copy_refuses():
    """The notebook's copy refuses sides under 28 pixels; the processor resizes them, and so does the frame."""
    for h, w in [(20, 2000), (1, 1), (27, 27), (5, 1000)]:
        with pytest.raises(ValueError, match="must be larger than factor"):
            notebook_smart_resize(h, w)
        assert F.smart_resize(h, w, 28, 3136, 28 * 28 * 16384) == processor_smart_resize(h, w, 28, 3136,
                                                                                          28 * 28 * 16384)
    # Where both are defined they agree with ours (the notebook's default max_pixels and the checkpoint's).
    for h, w in [(50, 2000), (2000, 50), (428, 640), (28, 28), (57, 29), (3000, 4000)]:
        for max_pixels in (14 * 14 * 4 * 1280, 28 * 28 * 16384):
            assert F.smart_resize(h, w, 28, 3136, max_pixels) == notebook_smart_resize(h, w, 28, 3136, max_pixels)


def test_extreme_aspect_ratio_edges_by_hand():
    """A 2000x50 image, by hand: what each frame writes for its top-left pixel and its whole."""
    w, h = 2000, 50
    # LLaVA-1.5: side 2000, image pasted at y 975: the image is y 0.4875..0.5125 of the square.
    llava = F.frame_for_family("llava")
    assert llava.to_frame([0, 0, 1, 1], w, h) == [0.0, 0.49, 0.0, 0.49]
    assert llava.to_frame([0, 0, w, h], w, h) == [0.0, 0.49, 1.0, 0.51]
    assert llava.from_frame([0.0, 0.49, 1.0, 0.51], w, h) == [0.0, 5.0, 2000.0, 45.0]
    # LLaVA-NeXT: 0..1 of the image itself.
    assert F.frame_for_family("llava_next").to_frame([0, 0, 1, 1], w, h) == [0.0, 0.0, 0.0, 0.02]
    # Qwen2-VL / Qwen3-VL: 0..1000.
    assert F.frame_for_family("qwen3_vl").to_frame([w - 1, h - 1, w, h], w, h) == [1000, 980, 1000, 1000]
    # Qwen2.5-VL: smart_resize -> 1988x56; the last pixel is 1987 / 55 (the official clip).
    q25 = qwen25_frame(None)
    assert q25.frame_size(w, h) == (1988.0, 56.0)
    assert q25.to_frame([0, 0, w, h], w, h) == [0, 0, 1987, 55]
    assert q25.to_frame([w - 1, h - 1, w, h], w, h) == [1987, 55, 1987, 55]
