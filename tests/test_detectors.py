"""Any detector, any number: --detector specs, per-detector class maps and weights, a third detector in the
ensemble (tiny real models, no network)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlm_annotation import data_annotation
from vlm_annotation.detectors import ClassMap, YoloDetector, parse_detector_spec
from vlm_core.io_utils import InputError
from vlm_core.schema import load_annotations


def test_detector_spec_and_class_map_sections_for_any_detector(tmp_path):
    assert parse_detector_spec("models/owl") == (None, "models/owl", None)
    assert parse_detector_spec("owl=models/owl,models/owl_p") == ("owl", "models/owl", "models/owl_p")
    with pytest.raises(InputError, match=r"expected \[NAME=\]MODEL"):
        parse_detector_spec("owl=")
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"owlv2": {"glass bottle": "glass", "tin": "can"}, "yolo": {"person": None}}))
    cmap = ClassMap.from_file(path)
    assert (cmap("owlv2", "Glass_Bottle"), cmap("yolo", "person"), cmap("yolo", "cup")) == ("glass", None, "cup")
    assert cmap.prompts("owlv2") == ["glass bottle", "tin"]  # what a zero-shot detector is asked for


def test_a_third_detector_runs_in_the_ensemble(tiny_models, sample_images_dir, tmp_path):
    out = tmp_path / "three.json"

    def args(third=f"rtdetr2={tiny_models['rtdetr_model']},{tiny_models['rtdetr_processor']}",
             weights=("1", "1", "2")):
        return ["--images_dir", str(sample_images_dir), "--output_file", str(out),
                "--yolo_model", str(tiny_models["yolo"]), "--detr_model", str(tiny_models["rtdetr_model"]),
                "--detr_processor", str(tiny_models["rtdetr_processor"]), "--detector", third,
                "--detector_weights", *weights, "--captioner_model", str(tiny_models["blip"]),
                "--max_det", "5", "--imgsz", "320", "--batch_size", "2", "--max_images", "3", "--keep_detector_boxes"]
    argv = args()
    assert data_annotation.main(argv) == 0
    data = load_annotations(out)
    assert data["meta"]["detectors"] == ["yolo", "rtdetr", "rtdetr2"]
    assert all(list(r["detector_boxes"]) == ["yolo", "rtdetr", "rtdetr2"] for r in data["images"])
    # The third detector is the second one's twin: wherever RT-DETR found an object, so did it.
    sources = [o["sources"] for r in data["images"] for o in r["objects"]]
    assert any("rtdetr2" in s for s in sources)
    assert all(("rtdetr" in s) == ("rtdetr2" in s) for s in sources)
    # One weight per detector, and names that differ (they become the objects' sources).
    with pytest.raises(InputError, match="give 3 weights"):
        data_annotation.parse_args(args(weights=("1", "1")))
    with pytest.raises(InputError, match="two detectors are named 'rtdetr'"):
        data_annotation.parse_args(args(third=f"rtdetr={tiny_models['rtdetr_model']},{tiny_models['rtdetr_processor']}"))


REPO = Path(__file__).resolve().parents[1]


# ---- zero-shot detectors of the real classes (tests/tiny_detectors.py), alone and as a third opinion
@pytest.fixture(scope="module")
def zero_shot(tmp_path_factory) -> dict[str, Path]:
    from fixtures.tiny_models import sample_photos
    from tests.tiny_detectors import build_grounding_dino, build_owlv2
    out, photos = tmp_path_factory.mktemp("zero_shot"), sample_photos()
    return {"owlv2": build_owlv2(out, photos), "grounding_dino": build_grounding_dino(out, photos)}


def _annotate(tiny_models, images_dir, out, *detector_args, max_images="2"):
    argv = ["--images_dir", str(images_dir), "--output_file", str(out), *detector_args,
            "--captioner_model", str(tiny_models["blip"]), "--max_det", "5", "--imgsz", "320", "--batch_size", "2",
            "--max_images", max_images, "--keep_detector_boxes"]
    assert data_annotation.main(argv) == 0
    return load_annotations(out)


@pytest.mark.parametrize("kind", ["owlv2", "grounding_dino"])
def test_a_zero_shot_detector_labels_with_the_classes_it_is_prompted_with(kind, zero_shot, tiny_models,
                                                                          sample_images_dir, tmp_path):
    from tests.tiny_detectors import QUERIES
    data = _annotate(tiny_models, sample_images_dir, tmp_path / "zs.json",
                     "--detector", f"{kind}={zero_shot[kind]}", "--classes", *QUERIES)
    assert data["meta"]["detectors"] == [kind] and data["meta"]["classes"] == QUERIES
    objects = [o for r in data["images"] for o in r["objects"]]
    assert objects, "the calibrated tiny model emits boxes"
    assert all(o["sources"] == [kind] and o["label"] in QUERIES for o in objects)
    boxes = [d for r in data["images"] for d in r["detector_boxes"][kind]]
    assert {d["label"] for d in boxes} <= set(QUERIES) and all(d["score"] > 0.3 for d in boxes)
    # Without a vocabulary a zero-shot detector cannot be asked anything: one line, before any image.
    with pytest.raises(InputError, match="a zero-shot detector needs its classes"):
        from vlm_annotation.detectors import ClassMap, load_detector
        load_detector((kind, str(zero_shot[kind]), None), "cpu", ClassMap(), 0.3, 320, 5, 2)


def test_three_detectors_with_a_zero_shot_one(zero_shot, tiny_models, sample_images_dir, tmp_path):
    from tests.tiny_detectors import QUERIES
    data = _annotate(tiny_models, sample_images_dir, tmp_path / "three.json",
                     "--yolo_model", str(tiny_models["yolo"]), "--detr_model", str(tiny_models["rtdetr_model"]),
                     "--detr_processor", str(tiny_models["rtdetr_processor"]),
                     "--detector", f"owl={zero_shot['owlv2']}", "--classes", *QUERIES, max_images="3")
    assert data["meta"]["detectors"] == ["yolo", "rtdetr", "owl"]
    assert all(list(r["detector_boxes"]) == ["yolo", "rtdetr", "owl"] for r in data["images"])
    assert all(r["detector_boxes"]["owl"] for r in data["images"])  # the zero-shot one found boxes everywhere
    # Every detector is named in the sources of the objects it took part in.
    assert {s for r in data["images"] for o in r["objects"] for s in o["sources"]} == {"yolo", "rtdetr", "owl"}


# ---- detector checkpoints from strangers (issue 28, point 11)
EVIL = """
import sys, torch
class Evil:
    def __reduce__(self):
        return (exec, ("open(%r, 'w').write('pwned')" % sys.argv[2],))
torch.save({"model": Evil(), "train_args": {}}, sys.argv[1])
"""


def test_a_pickled_detector_that_runs_code_is_refused(tiny_models, sample_images_dir, tmp_path, capsys):
    evil, marker = tmp_path / "evil.pt", tmp_path / "marker"
    subprocess.run([sys.executable, "-c", EVIL, str(evil), str(marker)], check=True)
    argv = ["--images_dir", str(sample_images_dir), "--output_file", str(tmp_path / "a.json"),
            "--yolo_model", str(evil), "--captioner_model", str(tiny_models["blip"])]
    assert data_annotation.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--yolo_model: refused to load" in err and "builtins.exec" in err and "--trust_detector_files" in err
    assert not marker.exists() and not (tmp_path / "a.json").exists()
    # The same file as a --detector: refused the same way.
    argv[4:6] = ["--detector", f"evil={evil}"]
    assert data_annotation.main(argv) == 2
    assert "--detector evil: refused to load" in capsys.readouterr().err and not marker.exists()
    # Trusted explicitly, it is unpickled as Ultralytics does by default: its code runs (then it is no model).
    with pytest.raises(InputError, match="cannot load"):
        YoloDetector(str(evil), "cpu", ClassMap(), 0.3, 320, 5, 1, trust=True)
    assert marker.read_text() == "pwned"


def test_ultralytics_checkpoints_load_safely_by_default(tiny_models):
    import ultralytics.nn.tasks as tasks
    for weights in (REPO / "world" / "models" / "yolo" / "yolo.pt", tiny_models["yolo"]):
        detector = YoloDetector(str(weights), "cpu", ClassMap(), 0.3, 320, 5, 1)
        assert detector.vocabulary() and type(detector.model.model).__name__ == "DetectionModel"
    assert tasks.SAFE_LOAD is False  # Ultralytics' own default is left as it was
