"""The box contract: pixel <-> normalized, padded square, text format and parser, IoU, clipping."""
import pytest
from PIL import Image

from vlm_core import boxes


def test_format_and_parse_round_trip():
    text = boxes.format_box([0.123, 0.3449, 0.5, 1.0])
    assert text == "[0.12, 0.34, 0.50, 1.00]"
    assert boxes.parse_box(text) == [0.12, 0.34, 0.5, 1.0]
    assert boxes.parse_box("The glass is at [0.1, 0.2,0.3 , 0.4] here") == [0.1, 0.2, 0.3, 0.4]
    assert boxes.parse_box("no box here") is None
    assert boxes.parse_box("[0.1, 0.2, 0.3]") is None
    assert boxes.format_box([-0.2, 0.5, 1.3, 0.5]) == "[0.00, 0.50, 1.00, 0.50]"


@pytest.mark.parametrize("width,height", [(640, 480), (480, 640), (500, 500), (1281, 719)])
def test_box_text_round_trips_within_rounding(width, height):
    box = [37.0, 12.5, 301.0, 420.0]
    box = boxes.clip_box(box, width, height)
    back = boxes.text_to_box(boxes.box_to_text(box, width, height), width, height)
    side = max(width, height)
    for a, b in zip(box, back):
        assert abs(a - b) <= 0.005 * side + 1e-6


def test_padded_square_maps_corners_of_a_wide_image():
    # 200x100: padded to 200x200, the image sits 50 px down.
    assert boxes.pixel_to_square([0, 0, 200, 100], 200, 100) == [0.0, 0.25, 1.0, 0.75]
    assert boxes.box_to_text([0, 0, 200, 100], 200, 100) == "[0.00, 0.25, 1.00, 0.75]"
    assert boxes.square_to_pixel([0.0, 0.25, 1.0, 0.75], 200, 100) == [0.0, 0.0, 200.0, 100.0]


def test_padded_square_maps_corners_of_a_tall_image():
    # 100x200: padded to 200x200, the image sits 50 px right.
    assert boxes.pixel_to_square([0, 0, 100, 200], 100, 200) == [0.25, 0.0, 0.75, 1.0]
    assert boxes.pixel_to_square([50, 100, 100, 200], 100, 200) == [0.5, 0.5, 0.75, 1.0]
    # A box in the padding maps back clipped to the image.
    assert boxes.square_to_pixel([0.0, 0.0, 0.5, 0.5], 100, 200) == [0.0, 0.0, 50.0, 100.0]


def test_pad_to_square_places_the_image_where_the_box_math_says():
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    sq = boxes.pad_to_square(img, (0.5, 0.25, 0.0))
    assert sq.size == (200, 200)
    assert sq.getpixel((100, 10)) == (127, 63, 0)      # padding in the processor's mean colour, as LLaVA pads
    assert sq.getpixel((100, 50)) == (255, 0, 0)       # first image row at y = 50
    assert sq.getpixel((100, 149)) == (255, 0, 0)
    assert sq.getpixel((100, 150)) == (127, 63, 0)
    assert boxes.pad_to_square(Image.new("RGB", (64, 64))).size == (64, 64)


def test_text_to_box_rejects_inverted_boxes():
    assert boxes.text_to_box("[0.5, 0.5, 0.1, 0.9]", 100, 100) is None
    assert boxes.text_to_box("nothing", 100, 100) is None


def test_iou_and_clip():
    assert boxes.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert boxes.iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0
    assert boxes.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert boxes.iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    assert boxes.clip_box([-5, 20, 120, -3], 100, 50) == [0.0, 0.0, 100.0, 20.0]
    assert boxes.is_degenerate([10, 10, 10.5, 40])
    assert not boxes.is_degenerate([10, 10, 12, 40])


def test_pixel_normalized_round_trip():
    box = [10.0, 20.0, 30.0, 40.0]
    norm = boxes.pixel_to_normalized(box, 100, 200)
    assert norm == [0.1, 0.1, 0.3, 0.2]
    assert boxes.normalized_to_pixel(norm, 100, 200) == pytest.approx(box)
    # Other families' frames: 0..1000 of the image (Qwen2-VL, Qwen3-VL), or the resized image's pixels.
    assert boxes.pixel_to_normalized(box, 100, 200, (1000.0, 1000.0)) == [100.0, 100.0, 300.0, 200.0]
    assert boxes.normalized_to_pixel([100.0, 100.0, 300.0, 200.0], 100, 200, (1000.0, 1000.0)) == box
    assert boxes.pixel_to_normalized(box, 100, 200, (56.0, 112.0)) == pytest.approx([5.6, 11.2, 16.8, 22.4])


def test_yolo_label_numbers():
    assert boxes.pixel_to_yolo([10, 20, 30, 60], 100, 200) == [0.2, 0.2, 0.2, 0.2]  # centre 20,40; size 20x40
    assert boxes.yolo_to_normalized(0.5, 0.25, 0.5, 0.5) == [0.25, 0.0, 0.75, 0.5]
    back = boxes.normalized_to_pixel(boxes.yolo_to_normalized(*boxes.pixel_to_yolo([10, 20, 30, 60], 100, 200)),
                                     100, 200)
    assert back == pytest.approx([10, 20, 30, 60])
