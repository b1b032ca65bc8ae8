"""Summary lines count one in the singular ("1 example", not "1 examples"): the training data's summary
(vlm_training/llava_data.py) and world/report.py surface."""
import json

from vlm_training.llava_data import DatasetStats
from world.report import main


def test_training_data_summary_counts_one_in_the_singular():
    one = DatasetStats(records=1, examples=1, shortened=1, turns_dropped=1)
    assert one.summary("train data") == \
        "train data: 1 example from 1 record, 1 shortened (1 turn dropped), 0 dropped as too long"
    many = DatasetStats(records=3, examples=2, dropped=1)
    assert many.summary("val data") == \
        "val data: 2 examples from 3 records, 0 shortened (0 turns dropped), 1 dropped as too long"


def _files(tmp_path, descriptions: list[str]):
    annotations, truth = tmp_path / "ann.json", tmp_path / "gt.json"
    objects = [{"id": k, "label": "glass", "bbox": [1, 1, 9, 9], "description": d} for k, d in enumerate(descriptions)]
    annotations.write_text(json.dumps({"images": [{"image": "s.png", "width": 10, "height": 10, "objects": objects}]}))
    truth.write_text(json.dumps({"images": [{"id": 1, "file_name": "s.png", "surface": "grass"}]}))
    return ["surface", "--annotations", str(annotations), "--ground_truth", str(truth),
            "--output_file", str(tmp_path / "surface.json")]


def test_surface_summary_counts_one_object_in_the_singular(tmp_path, capsys):
    right = "Here is a glass. The glass is on the grass, in the bottom left of the image."
    wrong = "Here is a glass. The glass is on the sand, in the top of the image."
    assert main(_files(tmp_path, [right])) == 0
    out = capsys.readouterr().out
    assert "descriptions name the true surface for 1.000 of 1 object -> " in out, out
    assert main(_files(tmp_path, [right, wrong])) == 0
    out = capsys.readouterr().out
    assert "of 2 objects -> " in out, out
    assert json.loads((tmp_path / "surface.json").read_text())["confusions"] == {"grass -> sand": 1}
