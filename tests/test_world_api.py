"""world/api_eval.py: the guide's API (describe_object, "what is in this box?", locate) scored field by
field against the world's truth, beside majority and chance; and the figures in the world's table."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from vlm_annotation.describer import compose_description
from world.api_eval import (
    balanced_accuracy,
    baseline_answers,
    description_fields,
    field_right,
    score,
    scored_items,
    training_values,
)
from world.make_world import write_world
from world.report import collect_results, results_table
from world.truth import truth_annotations

ROOT = Path(__file__).resolve().parents[1]


def test_description_fields_read_every_sentence_compose_description_writes():
    text = compose_description("can", "in the bottom left of the image", "small", "on the grass",
                               [("to the left of", "bottle"), ("above", "glass")], "litter on the grass")
    assert description_fields(text) == {
        "label": "can", "surface": "grass", "position": "bottom left", "size": "small",
        "relations": [("to the left of", "bottle"), ("above", "glass")], "relation": ("to the left of", "bottle")}
    one = compose_description("bag", "at the top of the image", "medium-sized", "on the sand", [("next to", "can")])
    assert description_fields(one) == {"label": "bag", "surface": "sand", "position": "top", "size": "medium-sized",
                                       "relations": [("next to", "can")], "relation": ("next to", "can")}
    plain = compose_description("glass", "in the centre of the image", "large")
    assert description_fields(plain) == {"label": "glass", "surface": None, "position": "centre", "size": "large",
                                         "relations": [], "relation": None}
    side = description_fields("Here is an item. The item is on the gravel, on the right of the image.", "item")
    assert (side["label"], side["surface"], side["position"], side["size"]) == ("item", "gravel", "right", None)


def test_a_description_that_is_not_of_that_form_states_nothing():
    assert description_fields("des obj obj obj") == {"label": None, "surface": None, "position": None,
                                                     "size": None, "relations": [], "relation": None}
    assert description_fields("") == description_fields(None) == description_fields("des obj obj obj")


def test_each_field_is_judged_against_the_truth():
    truth = description_fields(compose_description("can", "in the top right of the image", "small", "on the sand",
                                                   [("below", "bag"), ("next to", "glass")]))
    said = description_fields(compose_description("can", "in the top right of the image", "large", "on the grass",
                                                  [("next to", "glass")]))
    assert [field_right(f, said, truth, "can") for f in ("label", "surface", "position", "size", "relation")] == \
        [True, False, True, False, True]  # any one of the truth's relations counts
    assert field_right("label", said, truth, "bag") is False  # the given label, not any label
    lonely = description_fields(compose_description("can", "in the centre of the image", "small", "on the sand"))
    assert field_right("relation", said, lonely, "can") is None  # nothing to check: not counted
    nothing = description_fields("")
    assert field_right("position", nothing, truth, "can") is False


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("api_world")
    coco = write_world(out, train_images=12, heldout_images=10, seed=3)
    for pool in ("train", "heldout"):
        (out / f"{pool}_truth.json").write_text(json.dumps(truth_annotations(coco[pool], seed=3)))
    return out


def test_items_are_every_true_object_with_its_fields_and_a_unique_phrase(world):
    items = scored_items(world / "heldout_truth.json", 10_000, seed=0)
    records = json.loads((world / "heldout_truth.json").read_text())["images"]
    assert len(items) == sum(len(r["objects"]) for r in records) > 10
    for it in items:
        assert it["truth"]["label"] == it["label"] and it["truth"]["position"] and it["truth"]["size"]
        if it["phrase"]:
            assert it["phrase"].startswith(f"the {it['label']} ") and it["phrase"].endswith(" of the image")
    # a phrase is given only where it picks the object out alone
    phrases = [(it["image"], it["phrase"]) for it in items if it["phrase"]]
    assert len(phrases) == len(set(phrases))
    sample = scored_items(world / "heldout_truth.json", 5, seed=0)
    assert len(sample) == 5 and sample == scored_items(world / "heldout_truth.json", 5, seed=0)
    assert all(s in items for s in sample)


def test_the_truth_itself_scores_one_and_answers_that_say_nothing_score_zero(world):
    items = scored_items(world / "heldout_truth.json", 10_000, seed=0)
    right = score(items, [it["truth"] for it in items], [f"{it['label'].capitalize()}." for it in items],
                  [it["bbox"] for it in items])
    assert {f: v["accuracy"] for f, v in right["describe_object"].items()} == \
        {"label": 1.0, "surface": 1.0, "position": 1.0, "size": 1.0, "relation": 1.0}
    assert right["describe_object"]["size"]["balanced"] == 1.0
    assert right["region_label"]["accuracy"] == 1.0
    n_phrases = sum(bool(it["phrase"]) for it in items)
    assert right["grounding"] == {"acc50": 1.0, "mean_iou": 1.0, "unparsed": 0.0, "n": n_phrases}
    wrong = score(items, [description_fields("")] * len(items), ["obj"] * len(items), [None] * len(items))
    assert all(v["accuracy"] == 0.0 for v in wrong["describe_object"].values())
    assert wrong["describe_object"]["size"]["balanced"] == 0.0
    assert wrong["region_label"]["accuracy"] == 0.0
    assert wrong["grounding"] == {"acc50": 0.0, "mean_iou": 0.0, "unparsed": 1.0, "n": n_phrases}


def test_the_size_word_is_also_scored_with_each_true_size_weighted_alike():
    assert balanced_accuracy([("small", "small"), ("small", None), ("large", "small")]) == 0.25
    # a model that always says the majority size: 1.0 on that size, 0.0 on the others
    always = [("medium-sized", "medium-sized")] * 88 + [("small", "medium-sized")] * 4 + [("large", "medium-sized")] * 8
    assert balanced_accuracy(always) == pytest.approx(1 / 3)
    right_on_large = always[:92] + [("large", "large")] * 8
    assert balanced_accuracy(right_on_large) == pytest.approx(2 / 3)
    assert balanced_accuracy([]) is None


def test_majority_says_the_most_frequent_training_value_and_the_mean_box(world):
    values = training_values(world / "train_truth.json")
    items = scored_items(world / "heldout_truth.json", 10_000, seed=0)
    fields, labels, boxes = baseline_answers(items, values, "majority")
    for field in ("position", "size", "surface", "label"):
        assert all(f[field] == fields[0][field] for f in fields)
        assert values[field].count(fields[0][field]) == max(Counter(values[field]).values())
    mean = [sum(b[i] for b in values["box"]) / len(values["box"]) for i in range(4)]
    it = items[0]
    assert boxes[0] == pytest.approx([mean[0] * it["width"], mean[1] * it["height"], mean[2] * it["width"],
                                      mean[3] * it["height"]])
    assert labels == [fields[0]["label"]] * len(items)
    again = baseline_answers(items, values, "chance", seed=1)
    assert again == baseline_answers(items, values, "chance", seed=1)  # seeded
    assert all(f["size"] in values["size"] for f in again[0])


def test_ask_scores_a_real_world_llava_through_the_guides_api(world, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    subprocess.run([sys.executable, str(ROOT / "world" / "make_llava.py"), "--world", str(world), "--out",
                    str(tmp_path / "llava"), "--seed", "0"], check=True, capture_output=True, env=env)
    run = tmp_path / "run"
    (run / "api").mkdir(parents=True)
    common = ["--truth", str(world / "heldout_truth.json"), "--max_objects", "6", "--seed", "0"]
    ask = subprocess.run([sys.executable, str(ROOT / "world" / "api_eval.py"), "ask", "--model_path",
                          str(tmp_path / "llava"), "--images_dir", str(world / "heldout_images"), "--output_file",
                          str(run / "api" / "model.json"), "--max_new_tokens", "12", *common],
                         capture_output=True, text=True, env=env)
    assert ask.returncode == 0, ask.stderr[-2000:]
    assert ask.stdout.startswith("ask: 6 objects; describe_object label ")
    rows = [json.loads(line) for line in (run / "api" / "model.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(isinstance(r["description"], str) and isinstance(r["region_label"], str)
                                  for r in rows)
    scores = json.loads((run / "api" / "model.json").read_text())
    assert set(scores["describe_object"]) == {"label", "surface", "position", "size", "relation"}
    assert scores["grounding"]["n"] == sum(r["phrase"] is not None for r in rows)
    base = subprocess.run([sys.executable, str(ROOT / "world" / "api_eval.py"), "baselines", "--train",
                           str(world / "train_truth.json"), "--output_file", str(run / "api" / "baselines.json"),
                           *common], capture_output=True, text=True, env=env)
    assert base.returncode == 0, base.stderr[-2000:]
    results = collect_results(run)
    described = results["vlm"]["describe_object"]
    assert set(described) == {"label", "surface", "position", "size", "size_balanced", "relation"}
    assert set(described["size"]) == {"model", "majority", "untrained", "chance", "n"}
    assert described["size"]["model"] == scores["describe_object"]["size"]["accuracy"]
    assert described["size_balanced"]["model"] == scores["describe_object"]["size"]["balanced"]
    assert described["size_balanced"]["majority"] == pytest.approx(1 / len({it["truth"]["size"] for it in scored_items(
        world / "heldout_truth.json", 6, seed=0)}))  # one size always said: right on that one alone
    assert described["size"]["untrained"] is None  # no untrained.json in this run
    assert set(results["vlm"]["grounding"]) >= {"acc50", "mean_iou", "unparsed", "n"}
    table = results_table(results)
    assert "| region_label (answer_question) | 6 | accuracy |" in table
    assert "| describe_object(image, bbox, label): field right | n | model | majority | untrained | chance |" in table
    assert "| size word, balanced over the true sizes | 6 |" in table


def test_a_truth_file_with_no_objects_is_one_line(tmp_path):
    (tmp_path / "truth.json").write_text(json.dumps({"images": []}))
    proc = subprocess.run([sys.executable, str(ROOT / "world" / "api_eval.py"), "baselines", "--train",
                           str(tmp_path / "truth.json"), "--truth", str(tmp_path / "truth.json"), "--output_file",
                           str(tmp_path / "b.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "no objects to ask about" in proc.stderr and not (tmp_path / "b.json").exists()
