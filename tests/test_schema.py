"""The annotation validator names the first bad field by its path and the file."""
import copy
import json

import pytest

from vlm_core.io_utils import InputError
from vlm_core.schema import (
    AnnotationError,
    box_placeholder,
    load_annotations,
    placeholder_ids,
    render_placeholders,
    validate_annotations,
)


def good():
    return {
        "images": [
            {"image": "a.jpg", "width": 100, "height": 80, "caption": "a scene",
             "objects": [{"id": 0, "label": "glass", "bbox": [10, 10, 50, 60], "score": 0.9,
                          "sources": ["yolo", "rtdetr"], "description": "Here is a glass."},
                         {"id": 1, "label": "can", "bbox": [60, 5, 99, 79], "score": 0.4,
                          "sources": ["yolo"], "description": ""}],
             "qa": [{"question": "How many objects are there?", "answer": "There are 2 objects in this image.",
                     "type": "count", "object_ids": [0, 1]},
                    {"question": "Where is the glass <box:0> relative to the can <box:1>?",
                     "answer": "The glass is to the left of the can.", "type": "relation", "object_ids": [0, 1]},
                    {"question": "Please provide the bounding box coordinate of the region this sentence "
                                 "describes: the can", "answer": "<box:1>", "type": "grounding",
                     "object_ids": [1]}]},
            {"image": "sub/b.png", "width": 10, "height": 10, "caption": "", "objects": [], "qa": []},
        ],
        "skipped": [{"image": "bad.jpg", "reason": "not a recognised image format"}],
        "meta": {"tool": "test"},
    }


def test_good_file_passes():
    assert validate_annotations(good(), "x.json")["images"][0]["image"] == "a.jpg"


def test_label_candidates_are_optional_and_kept():
    data = copy.deepcopy(good())
    data["images"][0]["objects"][0]["label_candidates"] = [{"label": "can", "score": 0.31}]
    checked = validate_annotations(data, "x.json")
    assert checked["images"][0]["objects"][0]["label_candidates"] == [{"label": "can", "score": 0.31}]


BAD_CASES = [
    (lambda d: d.pop("images"), "images", "missing"),
    (lambda d: d.__setitem__("images", {}), "images", "expected a list"),
    (lambda d: d["images"][0].pop("width"), "images[0].width", "missing"),
    (lambda d: d["images"][0].__setitem__("height", 0), "images[0].height", "positive integer"),
    (lambda d: d["images"][0].__setitem__("width", 10**30), "images[0].width", "up to 1000000"),
    (lambda d: d["images"][0].__setitem__("image", "/abs/a.jpg"), "images[0].image", "relative"),
    (lambda d: d["images"][0].__setitem__("image", "../a.jpg"), "images[0].image", "relative"),
    (lambda d: d["images"][1].__setitem__("image", "a.jpg"), "images[1].image", "already listed"),
    (lambda d: d["images"][1].__setitem__("image", "sub/b\x00.png"), "images[1].image", "NUL byte"),
    (lambda d: d["images"][0]["objects"][1].__setitem__("bbox", [1, 2, 3]), "images[0].objects[1].bbox", "4 numbers"),
    (lambda d: d["images"][0]["objects"][1].__setitem__("bbox", [60, 5, 50, 79]), "images[0].objects[1].bbox", "x1 < x2"),
    (lambda d: d["images"][0]["objects"][1].__setitem__("bbox", [60, 5, 150, 79]), "images[0].objects[1].bbox", "outside"),
    (lambda d: d["images"][0]["objects"][1].__setitem__("bbox", [60, 5, "x", 79]), "images[0].objects[1].bbox", "finite"),
    (lambda d: d["images"][0]["objects"][0].__setitem__("score", 1.5), "images[0].objects[0].score", "[0, 1]"),
    (lambda d: d["images"][0]["objects"][0].__setitem__("label", ""), "images[0].objects[0].label", "empty"),
    (lambda d: d["images"][0]["objects"][0].__setitem__("sources", "yolo"), "images[0].objects[0].sources", "list"),
    (lambda d: d["images"][0]["objects"][1].__setitem__("id", 0), "images[0].objects[1].id", "duplicate"),
    (lambda d: d["images"][0]["objects"][1].__setitem__("id", True), "images[0].objects[1].id", "integer"),
    (lambda d: d["images"][0]["qa"][0].__setitem__("type", "colour"), "images[0].qa[0].type", "not one of"),
    (lambda d: d["images"][0]["qa"][0].__setitem__("answer", " "), "images[0].qa[0].answer", "empty"),
    (lambda d: d["images"][0]["qa"][0].__setitem__("object_ids", [0, 7]), "images[0].qa[0].object_ids[1]", "no object"),
    (lambda d: d["images"][0]["qa"][1].__setitem__("question", "Where is the glass <box:7>?"),
     "images[0].qa[1].question", "<box:7> names no object of this image (its object ids: 0, 1)"),
    (lambda d: d["images"][0]["qa"][2].__setitem__("answer", "<box:2>"),
     "images[0].qa[2].answer", "<box:2> names no object"),
    (lambda d: d["images"][0]["qa"][1].__setitem__("question", "Where is the glass <box:0> and <box:one>?"),
     "images[0].qa[1].question", "not a box placeholder <box:ID>"),
    (lambda d: d["images"][0]["objects"][0].__setitem__("label_candidates", {"can": 0.3}),
     "images[0].objects[0].label_candidates", "expected a list"),
    (lambda d: d["images"][0]["objects"][0].__setitem__("label_candidates", [{"label": "", "score": 0.3}]),
     "images[0].objects[0].label_candidates[0].label", "empty"),
    (lambda d: d["images"][0]["objects"][0].__setitem__("label_candidates", [{"label": "can", "score": 3}]),
     "images[0].objects[0].label_candidates[0].score", "[0, 1]"),
    (lambda d: d["skipped"][0].pop("reason"), "skipped[0].reason", "missing"),
    (lambda d: d.__setitem__("meta", []), "meta", "expected an object"),
]


@pytest.mark.parametrize("mutate,field,problem", BAD_CASES)
def test_each_bad_field_is_named_by_path(mutate, field, problem):
    data = copy.deepcopy(good())
    mutate(data)
    with pytest.raises(AnnotationError) as err:
        validate_annotations(data, "ann.json")
    assert err.value.field == field
    assert problem in err.value.problem
    assert str(err.value).startswith(f"ann.json: {field}: ")


def test_box_placeholders_name_objects_and_render_through_a_function():
    assert box_placeholder(3) == "<box:3>"
    text = "Where is the glass <box:0> relative to the can <box:12>?"
    assert placeholder_ids(text) == [0, 12] and placeholder_ids("no box here [0.1, 0.2, 0.3, 0.4]") == []
    rendered = render_placeholders(text, lambda oid: f"[box of {oid}]")
    assert rendered == "Where is the glass [box of 0] relative to the can [box of 12]?"
    # Only placeholders are replaced: numbers in free text are text.
    assert render_placeholders("at [0.1, 0.2, 0.3, 0.4]", lambda oid: "X") == "at [0.1, 0.2, 0.3, 0.4]"


def test_load_annotations_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(InputError, match="broken.json: invalid JSON"):
        load_annotations(path)
    with pytest.raises(InputError, match="file not found"):
        load_annotations(tmp_path / "missing.json")
    path.write_text(json.dumps(good()))
    assert len(load_annotations(path)["images"]) == 2


def test_the_streamed_reader_reports_like_the_whole_file_validator(tmp_path):
    """Every BAD_CASE gives the same field and problem through AnnotationReader, JSON and JSONL."""
    from vlm_core.schema import AnnotationReader, AnnotationWriter
    for mutate, field, problem in BAD_CASES:
        data = copy.deepcopy(good())
        mutate(data)
        path = tmp_path / "ann.json"
        path.write_text(json.dumps(data))
        with pytest.raises(AnnotationError) as err:
            list(AnnotationReader(path))
        assert (err.value.field, problem in err.value.problem) == (field, True)
    data = good()
    jl = tmp_path / "ann.jsonl"
    with AnnotationWriter(jl) as w:
        w.write_many(data["images"])
        w.finish(data["skipped"], data["meta"])
    lines = jl.read_text().splitlines()
    assert json.loads(lines[-2]) == {"skipped": data["skipped"]} and json.loads(lines[-1]) == {"meta": data["meta"]}
    assert load_annotations(jl) == data
    reader = AnnotationReader(jl)
    assert [r["image"] for r in reader] == ["a.jpg", "sub/b.png"] and reader.meta == {"tool": "test"}
