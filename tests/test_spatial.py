"""Position, size and relation words, and how descriptions and captions are put together."""
import pytest

from vlm_annotation.describer import (
    PromptBook,
    clean_caption,
    compose_description,
    context_crop,
    strip_prompt,
    surface_phrase,
)
from vlm_annotation.spatial import nearest, position_phrase, position_word, relation, relation_phrase, size_word

W, H = 300, 300


@pytest.mark.parametrize("centre, word, phrase", [
    ((50, 50), "top left", "in the top left of the image"),
    ((150, 20), "top", "at the top of the image"),
    ((280, 40), "top right", "in the top right of the image"),
    ((20, 150), "left", "on the left of the image"),
    ((150, 150), "centre", "in the centre of the image"),
    ((250, 160), "right", "on the right of the image"),
    ((50, 250), "bottom left", "in the bottom left of the image"),
    ((150, 299), "bottom", "at the bottom of the image"),
    ((299, 299), "bottom right", "in the bottom right of the image"),
])
def test_position_words_on_a_3x3_grid(centre, word, phrase):
    cx, cy = centre
    box = [cx - 1, cy - 1, cx + 1, cy + 1]
    assert position_word(box, W, H) == word
    assert position_phrase(box, W, H) == phrase


def test_size_words():
    assert size_word([0, 0, 30, 30], W, H) == "small"          # 1 % of the image
    assert size_word([0, 0, 90, 90], W, H) == "medium-sized"   # 9 %
    assert size_word([0, 0, 150, 150], W, H) == "large"        # 25 %


def test_relations_between_boxes():
    left, right = [10, 100, 50, 140], [200, 110, 240, 150]
    top, bottom = [100, 10, 140, 40], [100, 200, 140, 240]
    assert relation(left, right, W, H) == "left of"
    assert relation(right, left, W, H) == "right of"
    assert relation(top, bottom, W, H) == "above"
    assert relation(bottom, top, W, H) == "below"
    assert relation([100, 100, 140, 140], [110, 105, 150, 145], W, H) == "next to"
    assert relation_phrase(left, right, W, H) == "to the left of"
    assert relation_phrase(top, bottom, W, H) == "above"
    assert nearest(0, [left, right, [60, 100, 90, 140]], 2) == [2, 1]


def test_description_sentence():
    text = compose_description("glass", "in the bottom left of the image", "small", "on the grass",
                               [("to the left of", "bottle"), ("below", "apple")], "a park with trees")
    assert text == ("Here is a glass. The glass is on the grass, in the bottom left of the image. It is small. "
                    "It is to the left of a bottle and below an apple. The scene shows a park with trees.")
    assert compose_description("can", "at the top of the image", "large", relations=[("next to", "cup")] * 2) == \
        "Here is a can. The can is at the top of the image. It is large. It is next to a cup."
    assert compose_description("can", "at the top of the image", "large") == \
        "Here is a can. The can is at the top of the image. It is large."


def test_caption_prompt_is_stripped_and_garbage_cleaned():
    prompt = "a photo of a glass lying on"
    assert strip_prompt("A photo of a glass  lying on the grass", prompt) == "the grass"
    assert clean_caption(strip_prompt("a photo of a glass lying on the grass the grass the grass", prompt)) == \
        "the grass"
    assert clean_caption("the the table table") == "the table"
    assert clean_caption("[UNK] ## , .") == ""
    assert clean_caption("") == ""
    assert clean_caption("the grass and") == "the grass"
    assert surface_phrase(prompt, "the grass") == "on the grass"
    assert surface_phrase("a photo of a can next to", "a tree") == "next to a tree"
    assert surface_phrase("a photo of a can", "a tree") == ""
    assert surface_phrase(prompt, "") == ""


def test_prompt_book_defaults_and_overrides():
    book = PromptBook({"Glass": "a photo of a glass bottle lying on", "__default__": "a picture of {article} {label} on"})
    assert book.for_label("glass") == "a photo of a glass bottle lying on"
    assert book.for_label("apple") == "a picture of an apple on"
    assert PromptBook().for_label("can") == "a photo of a can lying on"
    assert PromptBook().image == "a picture of"


def test_context_crop_adds_margin_and_stays_inside():
    from PIL import Image
    img = Image.new("RGB", (100, 80))
    assert context_crop(img, [40, 30, 60, 50], 0.5).size == (40, 40)
    assert context_crop(img, [0, 0, 20, 20], 0.5).size == (30, 30)
    assert context_crop(img, [99, 79, 100, 80], 0.0).size == (8, 8)


def test_description_surface_reads_back_what_compose_description_wrote():
    from vlm_annotation.describer import description_surface
    text = compose_description("glass", "in the bottom left of the image", "small", "on the grass",
                               [("to the left of", "can")], "litter on the grass")
    assert description_surface(text, "glass") == ("on", "grass")
    assert description_surface(compose_description("can", "at the top of the image", "large", "on top of a bag"),
                               "can") == ("on top of", "bag")
    assert description_surface(compose_description("can", "in the centre of the image", "small"), "can") == ("", "")
    assert description_surface("Here is a can. The can is on the grass, in the centre of the image.", "glass") == \
        ("", "")
    assert description_surface("", "can") == ("", "")
