"""Q&A pairs from a hand-made object list: exact questions and answers, seeded choices; boxes are
the placeholders of their objects (``<box:ID>``), never numbers."""
from vlm_annotation.qa import generate_qa, image_rng
from vlm_core import prompts
from vlm_core.schema import QA_TYPES, validate_image_record

W, H = 400, 300
VOCAB = ["bottle", "can", "glass", "paper", "plastic"]
GLASS = {"id": 0, "label": "glass", "bbox": [20.0, 220.0, 80.0, 290.0], "score": 0.9, "sources": ["yolo"],
         "description": "Here is a glass. The glass is on the grass, in the bottom left of the image."}
BOTTLE = {"id": 1, "label": "bottle", "bbox": [300.0, 200.0, 340.0, 290.0], "score": 0.8,
          "sources": ["rtdetr", "yolo"], "description": "Here is a bottle."}
WHERE = {0: "on the grass, in the bottom left of the image", 1: "in the bottom right of the image"}


def by_type(qa):
    out = {}
    for q in qa:
        out.setdefault(q["type"], []).append(q)
    return out


def test_qa_for_two_objects():
    qa = generate_qa([GLASS, BOTTLE], W, H, VOCAB, image_rng(0, "a.jpg"), WHERE)
    assert [q["type"] for q in qa] == sorted((q["type"] for q in qa), key=QA_TYPES.index)
    t = by_type(qa)
    assert t["count"] == [{"question": "How many objects are there?", "answer": "There are 2 objects in this image.",
                           "type": "count", "object_ids": [0, 1]}]
    counts = {q["question"]: (q["answer"], q["object_ids"]) for q in t["count_class"]}
    assert counts["How many glasses are there?"] == ("There is 1 glass in this image.", [0])
    assert counts["How many bottles are there?"] == ("There is 1 bottle in this image.", [1])
    negatives = [q for q in t["exists"] if q["answer"].startswith("No")]
    assert len(negatives) == 2
    for q in negatives:
        label = q["question"][len("Is there a "):-len(" in this image?")]
        assert label in {"can", "paper", "plastic"}
        assert q["answer"] == f"No, there is no {label} in this image." and q["object_ids"] == []
        assert {"question": prompts.COUNT_CLASS.format(plural=prompts.plural(label)),
                "answer": f"There are no {prompts.plural(label)} in this image.", "type": "count_class",
                "object_ids": []} in t["count_class"]
    assert {"question": "Is there a glass in this image?", "answer": "Yes, there is a glass in this image.",
            "type": "exists", "object_ids": [0]} in t["exists"]
    assert [(q["question"], q["answer"]) for q in t["location"]] == [
        ("Where is the glass?", "The glass is on the grass, in the bottom left of the image."),
        ("Where is the bottle?", "The bottle is in the bottom right of the image.")]
    glass_box, bottle_box = "<box:0>", "<box:1>"
    assert not any("[" in q["question"] + q["answer"] for q in qa)  # no box written as numbers anywhere
    questions = sorted(q["question"] for q in t["region_description"])
    # One of the two objects (seeded) gets the labelled wording, the other the plain one.
    assert questions in (
        sorted([prompts.REGION_DESCRIPTION_LABELED.format(label="glass", box=glass_box),
                prompts.REGION_DESCRIPTION.format(box=bottle_box)]),
        sorted([prompts.REGION_DESCRIPTION.format(box=glass_box),
                prompts.REGION_DESCRIPTION_LABELED.format(label="bottle", box=bottle_box)]))
    assert sorted(q["answer"] for q in t["region_description"]) == sorted([GLASS["description"],
                                                                          BOTTLE["description"]])
    assert [(q["question"], q["answer"]) for q in t["region_label"]] == [
        (prompts.REGION_LABEL.format(box=glass_box), "glass"), (prompts.REGION_LABEL.format(box=bottle_box), "bottle")]
    assert [(q["question"], q["answer"], q["object_ids"]) for q in t["grounding"]] == [
        (prompts.GROUNDING.format(text="the glass in the bottom left of the image"), glass_box, [0]),
        (prompts.GROUNDING.format(text="the bottle in the bottom right of the image"), bottle_box, [1])]
    (rel,) = t["relation"]
    if rel["object_ids"] == [0, 1]:
        assert rel["question"] == prompts.RELATION.format(label_a="glass", box_a=glass_box,
                                                          label_b="bottle", box_b=bottle_box)
        assert rel["answer"] == "The glass is to the left of the bottle."
    else:
        assert rel["object_ids"] == [1, 0]
        assert rel["answer"] == "The bottle is to the right of the glass."
    record = {"image": "a.jpg", "width": W, "height": H, "objects": [GLASS, BOTTLE], "qa": qa}
    validate_image_record(record, None, "images[0]")


def test_qa_is_deterministic_per_seed_and_image():
    make = lambda seed, name: generate_qa([GLASS, BOTTLE], W, H, VOCAB, image_rng(seed, name), WHERE)  # noqa: E731
    assert make(1, "a.jpg") == make(1, "a.jpg")
    variants = {str(make(s, "a.jpg")) for s in range(12)}
    assert len(variants) > 1  # the seed does change the choices


def test_image_without_objects_gets_correct_answers():
    qa = generate_qa([], W, H, VOCAB, image_rng(0, "empty.jpg"))
    t = by_type(qa)
    assert set(t) == {"count", "count_class", "exists"}
    assert t["count"][0]["answer"] == "There are no objects in this image."
    assert all(q["answer"].startswith("No, there is no ") for q in t["exists"])
    assert all(q["answer"].startswith("There are no ") for q in t["count_class"])
    assert len(t["exists"]) == 1


def test_several_objects_of_one_class_name_their_box():
    other = dict(GLASS, id=1, bbox=[300.0, 10.0, 360.0, 80.0], description="Here is another glass.")
    qa = generate_qa([GLASS, other], W, H, VOCAB, image_rng(0, "b.jpg"))
    t = by_type(qa)
    assert t["count_class"][0] == {"question": "How many glasses are there?",
                                   "answer": "There are 2 glasses in this image.", "type": "count_class",
                                   "object_ids": [0, 1]}
    assert [q["question"] for q in t["location"]] == [
        "Where is the glass at <box:0>?", "Where is the glass at <box:1>?"]
    assert len(t["exists"]) == 2  # one yes, one no (one class present -> one negative)


def test_surface_question_when_the_description_names_what_the_object_lies_on():
    qa = generate_qa([GLASS, BOTTLE], W, H, VOCAB, image_rng(0, "a.jpg"), WHERE)
    # The user guide's example: the glass's description says it is on the grass; the bottle's names no surface.
    assert by_type(qa)["surface"] == [{"question": "What is the glass lying on?", "answer": "grass",
                                       "type": "surface", "object_ids": [0]}]
    assert qa[-1]["type"] == "surface"  # QA_TYPES order


def test_surface_question_names_the_box_when_the_class_repeats_and_skips_other_prepositions():
    other = dict(GLASS, id=1, bbox=[300.0, 10.0, 360.0, 80.0],
                 description="Here is a glass. The glass is on top of a wooden table, at the top of the image.")
    inside = dict(BOTTLE, id=2, description="Here is a bottle. The bottle is in a bag, on the right of the image.")
    t = by_type(generate_qa([GLASS, other, inside], W, H, VOCAB, image_rng(0, "c.jpg")))
    assert [(q["question"], q["answer"], q["object_ids"]) for q in t["surface"]] == [
        ("What is the glass at <box:0> lying on?", "grass", [0]),
        ("What is the glass at <box:1> lying on?", "wooden table", [1])]
