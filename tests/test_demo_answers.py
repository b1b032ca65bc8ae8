"""scripts/demo_answers.py, the end of `make demo`: the committed world VLM asked through the guide's API about a
held-out world scene, each answer next to the world's ground truth, and the per-type table."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from demo_answers import main, per_type_table, pick_scenes  # noqa: E402

from world.api_eval import scored_items  # noqa: E402
from world.make_world import write_world  # noqa: E402
from world.truth import truth_annotations  # noqa: E402

VLM = ROOT / "world" / "models" / "vlm"


@pytest.fixture(scope="module")
def world_truth(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_answers")
    coco = write_world(root / "world", 0, 6, seed=1)["heldout"]
    truth = root / "truth.json"
    truth.write_text(json.dumps(truth_annotations(coco, seed=42)))
    return root, truth


def test_the_scene_is_the_first_with_an_object_a_phrase_picks_out_alone(world_truth):
    root, truth_file = world_truth
    truth = json.loads(truth_file.read_text())
    items = scored_items(truth, None, 0)
    assert items == scored_items(truth_file, None, 0)  # the file, or its contents already read
    (record, item), = pick_scenes(truth, items)
    with_phrase = [r for r in truth["images"] if any(it["image"] == r["image"] and it["phrase"] for it in items)]
    assert len(with_phrase) >= 3
    assert record is with_phrase[0] and item["image"] == record["image"]
    assert item["phrase"].startswith(f"the {item['label']} ")
    three = pick_scenes(truth, items, 3)
    assert [r for r, _ in three] == with_phrase[:3]  # the first three, in the file's order
    assert all(it["image"] == r["image"] and it["phrase"] for r, it in three)
    assert pick_scenes(truth, items, 100) == pick_scenes(truth, items, len(with_phrase))
    assert pick_scenes({"images": [{"image": "x.jpg", "objects": []}]}, items, 3) == []


def test_per_type_table_puts_each_type_beside_its_majority():
    model = {"per_type": {"count": {"n": 8, "count_exact": 0.5, "accuracy": 0.5},
                          "grounding": {"n": 4, "acc@0.5": 0.25}}}
    majority = {"per_type": {"count": {"n": 8, "count_exact": 0.25}}}
    assert per_type_table(model, majority) == [
        "| question type | n | metric | model | majority of the training split |", "|---|---|---|---|---|",
        "| count | 8 | count_exact | 0.500 | 0.250 |", "| grounding | 4 | acc@0.5 | 0.250 | – |"]


def test_the_committed_world_vlm_answers_a_held_out_scene_through_the_api(world_truth, tmp_path, capsys):
    """The real committed model (world/models/vlm), loaded by VLMInference, asked the four calls; the output names
    each call, its answer and the truth."""
    root, truth_file = world_truth
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"per_type": {"count": {"n": 6, "count_exact": 0.5}}}))
    assert main(["--model_path", str(VLM), "--truth", str(truth_file), "--images_dir",
                 str(root / "world" / "heldout_images"), "--model_metrics", str(metrics),
                 "--majority_metrics", str(metrics), "--scenes", "1"]) == 0
    out = capsys.readouterr().out
    for call in ('vlm.answer_question("How many objects are there?")', "vlm.describe_object(image, bbox=[",
                 "vlm.label_object(image, bbox=[", 'vlm.locate(image, "the '):
        assert call in out
    assert out.count("\n  truth: ") == 4 and "answers right on this scene" in out
    assert "answers right on 1 held-out scene. The test split" in out
    assert "  fields: label right, surface right" in out  # each field of the description checked on its own
    assert "| count | 6 | count_exact | 0.500 | 0.500 |" in out
    # the world VLM names the label it is given and the surface the scene lies on
    described = out.split("vlm.describe_object(")[1].split("\n")[1]
    label = out.split('label="')[1].split('"')[0]
    assert described.strip().startswith(f"-> Here is {'an' if label[0] in 'aeiou' else 'a'} {label}.")


def test_a_malformed_truth_file_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "truth.json"
    bad.write_text("{")
    ok = tmp_path / "m.json"
    ok.write_text("{}")
    assert main(["--model_path", str(VLM), "--truth", str(bad), "--images_dir", str(tmp_path),
                 "--model_metrics", str(ok), "--majority_metrics", str(ok)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and err.count("\n") == 1
