"""world/token_places.py: where each image token of every family's world VLM sits in the original image, read from
the family's own processor and packing code, against each layout's own formula."""
from __future__ import annotations

from pathlib import Path

import pytest

from vlm_core.boxes import square_offsets
from world.make_family import FAMILY_NAMES
from world.make_world import SIZES
from world.token_places import EDGE, coordinate_image, token_places, tokens_in_box

ROOT = Path(__file__).resolve().parents[1]
VLMS = ROOT / "world" / "models" / "family_vlms"
NEAR = 0.015  # a place is read to 1/255; a token half on padding reads its image half, up to a pixel in (1/96)


def test_the_coordinate_image_spells_each_pixels_own_place():
    image = coordinate_image(4, 2)
    assert [image.getpixel((x, 0)) for x in range(4)] == [(32, 64, 255), (96, 64, 255), (159, 64, 255),
                                                          (223, 64, 255)]
    assert image.getpixel((0, 1)) == (32, 191, 255)
    assert coordinate_image(4, 2, negative=True).getpixel((0, 1)) == (223, 64, 0)


def test_tokens_in_the_box_include_its_edges_and_fall_back_to_the_nearest():
    places = [(0.25, 0.25), (0.75, 0.25), None, (0.25, 0.75), (0.75, 0.75)]
    assert tokens_in_box(places, [0, 0, 50, 50], 100, 100) == [0]
    assert tokens_in_box(places, [25, 0, 75, 100], 100, 100) == [0, 1, 3, 4]  # centres on the edges count
    assert tokens_in_box(places, [0, 0, 100 * (0.25 - 2 * EDGE), 100], 100, 100) == [0]  # none inside: the nearest
    assert tokens_in_box(places, [60, 60, 70, 70], 100, 100) == [4]


def _load(family: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm_core import families
    from vlm_training.family_data import family_layout

    path = VLMS / family
    processor = AutoProcessor.from_pretrained(path)
    layout = family_layout(processor, families.detect_family(path), "text", "none")
    return AutoModelForImageTextToText.from_pretrained(path), processor, layout


def _check_padded_square(places, width, height, grid):
    """LLaVA-1.5 / ViP-LLaVA: a grid x grid square over the image padded to a square (vlm_core.boxes' formula)."""
    side, dx, dy = square_offsets(width, height)
    for k, place in enumerate(places):
        x, y = (k % grid + 0.5) / grid * side - dx, (k // grid + 0.5) / grid * side - dy
        if -0.5 < x < width + 0.5 and -0.5 < y < height + 0.5:  # on the image, or on its edge
            assert place is not None, (k, x, y)
            assert abs(place[0] - x / width) <= NEAR and abs(place[1] - y / height) <= NEAR, (k, place, x, y)
        else:
            assert place is None, (k, place, x, y)


def _check_qwen(places, processor, image):
    """Qwen-VL: row-major windows of merge x merge patches over the smart_resize'd image, which spans the image."""
    out = processor.image_processor(images=[image], return_tensors="pt")
    _, gh, gw = (int(v) for v in out["image_grid_thw"][0])
    rows, cols = gh // processor.image_processor.merge_size, gw // processor.image_processor.merge_size
    assert len(places) == rows * cols
    for k, place in enumerate(places):
        assert place is not None
        assert abs(place[0] - (k % cols + 0.5) / cols) <= NEAR and abs(place[1] - (k // cols + 0.5) / rows) <= NEAR


def _check_anyres(places, grid):
    """LLaVA-NeXT / OneVision: the base view (the image resized to the square) on a grid x grid, then the tile's
    tokens unpadded, row by row, each row ended by a newline (no place)."""
    for k, place in enumerate(places[:grid * grid]):
        assert abs(place[0] - (k % grid + 0.5) / grid) <= NEAR and abs(place[1] - (k // grid + 0.5) / grid) <= NEAR
    tile = places[grid * grid:]
    assert tile[-1] is None
    rows, row = [], []
    for place in tile:
        if place is None:
            rows.append(row)
            row = []
        else:
            row.append(place)
    assert len({len(r) for r in rows}) == 1 and len(rows[0]) > 1
    for r in rows:  # left to right along a row, at one height
        assert all(a[0] < b[0] for a, b in zip(r, r[1:])) and max(p[1] for p in r) - min(p[1] for p in r) <= NEAR
    assert all(a[0][1] < b[0][1] for a, b in zip(rows, rows[1:]))  # top to bottom
    # the unpadded tile spans the image, no more: its first and last centres half a token in from the edges
    for axis, n in ((0, len(rows[0])), (1, len(rows))):
        first, last = rows[0][0][axis], rows[-1][-1][axis]
        assert abs(first - 0.5 / n) <= 2 * NEAR + 0.5 / n and abs(last - (1 - 0.5 / n)) <= 2 * NEAR + 0.5 / n


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_familys_token_places_follow_its_layout_on_every_world_image_size(family):
    from vlm_core import families

    model, processor, layout = _load(family)
    for width, height in SIZES:
        places = token_places(model, layout, width, height)
        # as many places as the processor puts image tokens in the prompt (token_places refuses otherwise)
        assert len(places) == families.image_token_count(processor, width, height)
        if family.startswith("qwen"):
            _check_qwen(places, processor, coordinate_image(width, height))
            continue
        grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
        if family in ("llava", "vip_llava"):
            _check_padded_square(places, width, height, grid)
        else:
            _check_anyres(places, grid)
