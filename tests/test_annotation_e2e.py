"""Stage 1 end to end on the tiny models: broken files, resume, shards, processes, errors."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vlm_annotation import (
    data_annotation,
    engine,
    evaluate_annotations,
    export_annotations,
    import_labels,
    merge_annotations,
)
from vlm_annotation.engine import fuse_detections
from vlm_annotation.progress import progress_path
from vlm_core.io_utils import InputError
from vlm_core.schema import QA_TYPES, load_annotations

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["bus.jpg", "rotated.jpg", "scenes/scene_0.jpg", "scenes/scene_1.png", "scenes/scene_2.jpg",
        "scenes/scene_3.png", "zidane.jpg"]
BROKEN = ["empty.jpg", "scenes/text.jpg", "truncated.jpg"]


@pytest.fixture(scope="module")
def images_dir(sample_images_dir, tmp_path_factory):
    """Sample photos plus broken files, a non-image and an EXIF-rotated photo."""
    out = tmp_path_factory.mktemp("mixed_images")
    shutil.copytree(sample_images_dir, out, dirs_exist_ok=True)
    (out / "empty.jpg").write_bytes(b"")
    (out / "scenes" / "text.jpg").write_text("not an image\n")
    data = (out / "bus.jpg").read_bytes()
    (out / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (out / "notes.txt").write_text("ignored\n")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    Image.new("RGB", (120, 60), (90, 160, 60)).save(out / "rotated.jpg", exif=exif)
    return out


def args_for(tiny_models, images_dir, output, *extra):
    return ["--images_dir", str(images_dir), "--output_file", str(output),
            "--yolo_model", str(tiny_models["yolo"]), "--detr_model", str(tiny_models["rtdetr_model"]),
            "--detr_processor", str(tiny_models["rtdetr_processor"]), "--captioner_model", str(tiny_models["blip"]),
            "--max_det", "5", "--imgsz", "320", "--batch_size", "2", "--seed", "3", *extra]


@pytest.fixture(scope="module")
def reference(tiny_models, images_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "annotations.json"
    assert data_annotation.main(args_for(tiny_models, images_dir, out)) == 0
    return load_annotations(out), out


def test_annotates_good_images_and_skips_broken_ones(reference):
    data, out = reference
    assert [r["image"] for r in data["images"]] == GOOD
    assert [s["image"] for s in data["skipped"]] == BROKEN
    assert all(s["reason"] for s in data["skipped"])
    assert not progress_path(out).exists()
    rotated = next(r for r in data["images"] if r["image"] == "rotated.jpg")
    assert (rotated["width"], rotated["height"]) == (60, 120)
    bus = data["images"][0]
    assert (bus["width"], bus["height"]) == (810, 1080)
    n_objects = 0
    for rec in data["images"]:
        labels = {o["label"] for o in rec["objects"]}
        assert labels <= {"glass", "plastic", "can", "paper", "bottle"}
        assert len(rec["objects"]) <= 10  # at most --max_det from each of the two detectors
        for o in rec["objects"]:
            n_objects += 1
            assert o["sources"] and set(o["sources"]) <= {"yolo", "rtdetr"}
            assert o["description"].startswith(f"Here is a {o['label']}. The {o['label']} is ")
        types = [q["type"] for q in rec["qa"]]
        assert set(types) <= set(QA_TYPES)
        assert types.count("count") == 1
        count = next(q for q in rec["qa"] if q["type"] == "count")
        assert count["object_ids"] == [o["id"] for o in rec["objects"]]
    assert n_objects > 0
    assert {"region_description", "grounding", "region_label"} <= {q["type"] for r in data["images"] for q in r["qa"]}
    assert data["meta"]["seed"] == 3 and data["meta"]["fusion"] == "wbf"


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_file(reference, tiny_models, images_dir, tmp_path, monkeypatch):
    out = tmp_path / "annotations.json"
    real_add = engine.ProgressLog.add_image
    written = []

    def add_then_die(self, record):
        if len(written) == 3:  # killed in the middle of the second batch
            raise Interrupted
        real_add(self, record)
        written.append(record["image"])

    monkeypatch.setattr(engine.ProgressLog, "add_image", add_then_die)
    with pytest.raises(Interrupted):
        data_annotation.main(args_for(tiny_models, images_dir, out))
    monkeypatch.undo()
    assert not out.exists() and progress_path(out).exists()
    with open(progress_path(out), "a") as f:
        f.write('{"image": "half a line')  # as a kill during a write leaves it

    annotated = []
    real_annotate = engine.Annotator.annotate

    def spy(self, names, images):
        annotated.extend(names)
        return real_annotate(self, names, images)

    monkeypatch.setattr(engine.Annotator, "annotate", spy)
    assert data_annotation.main(args_for(tiny_models, images_dir, out)) == 0
    assert sorted(annotated) == sorted(set(GOOD) - set(written))  # nothing redone, nothing lost
    assert load_annotations(out) == reference[0]

    # A changed setting does not silently mix runs: it is refused until --restart.
    engine.ProgressLog(progress_path(out), {"seed": 1}).open().close()
    code = data_annotation.main(args_for(tiny_models, images_dir, out))
    assert code == 2


def _fields(objects, keys=("label", "bbox", "score", "sources")):
    return [tuple(json.dumps(o[k]) for k in keys) for o in objects]


def test_kept_detector_boxes_imported_labels_and_evaluation(reference, tiny_models, images_dir, tmp_path, capsys):
    # --keep_detector_boxes only adds: the objects are those of the run without it.
    kept_file = tmp_path / "kept.json"
    assert data_annotation.main(args_for(tiny_models, images_dir, kept_file, "--keep_detector_boxes",
                                         "--dtype", "float32")) == 0
    kept = load_annotations(kept_file)
    assert kept["meta"]["keep_detector_boxes"] is True and kept["meta"]["precision"] == "fp32"
    assert [{k: v for k, v in r.items() if k != "detector_boxes"} for r in kept["images"]] == reference[0]["images"]
    assert any(r["detector_boxes"]["yolo"] for r in kept["images"]) and \
        any(r["detector_boxes"]["rtdetr"] for r in kept["images"])
    for rec in kept["images"]:
        # Fusing the kept boxes again (what evaluate_annotations --sweep does) gives exactly the stored objects.
        again = fuse_detections([rec["detector_boxes"]["yolo"], rec["detector_boxes"]["rtdetr"]], ["yolo", "rtdetr"],
                                rec["width"], rec["height"], "wbf", [1.0, 1.0], 0.55, None,
                                kept["meta"]["agnostic_iou"])
        assert _fields(again) == _fields(rec["objects"])

    # --fusion_conf_threshold: the objects come from the surer boxes only, the kept boxes stay those of the
    # detectors' --conf_threshold (0.3), so the scoring can still sweep the thresholds in between.
    scores = sorted(d["score"] for r in kept["images"] for dets in r["detector_boxes"].values() for d in dets)
    surer = round(scores[len(scores) // 2], 4)
    assert 0.3 < surer < scores[-1]
    strict_file = tmp_path / "strict.json"
    assert data_annotation.main(args_for(tiny_models, images_dir, strict_file, "--keep_detector_boxes",
                                         "--dtype", "float32", "--fusion_conf_threshold", str(surer))) == 0
    strict = load_annotations(strict_file)
    assert strict["meta"]["fusion_conf_threshold"] == surer and "fusion_conf_threshold" not in kept["meta"]
    assert [r["detector_boxes"] for r in strict["images"]] == [r["detector_boxes"] for r in kept["images"]]
    for rec in strict["images"]:
        boxes = [[d for d in rec["detector_boxes"][n] if d["score"] > surer] for n in ("yolo", "rtdetr")]
        assert _fields(rec["objects"]) == _fields(fuse_detections(boxes, ["yolo", "rtdetr"], rec["width"],
                                                                  rec["height"], "wbf", [1.0, 1.0], 0.55, None,
                                                                  strict["meta"]["agnostic_iou"]))
    assert 0 < sum(len(r["objects"]) for r in strict["images"]) < sum(len(r["objects"]) for r in kept["images"])
    with pytest.raises(InputError, match="--fusion_conf_threshold"):  # below the detectors' own: meaningless
        data_annotation.parse_args(args_for(tiny_models, images_dir, strict_file, "--fusion_conf_threshold", "0.2"))

    # Export -> import: the same boxes, described by the same code (same captioner, prompts and seed).
    coco = tmp_path / "gt.json"
    assert export_annotations.main(["--annotation_file", str(reference[1]), "--format", "coco",
                                    "--output_file", str(coco)]) == 0
    imported_file = tmp_path / "imported.json"
    assert import_labels.main(["--coco", str(coco), "--images_dir", str(images_dir), "--output_file",
                               str(imported_file), "--captioner_model", str(tiny_models["blip"]), "--seed", "3",
                               "--batch_size", "2"]) == 0
    imported = load_annotations(imported_file)
    assert [r["image"] for r in imported["images"]] == GOOD
    for mine, theirs in zip(imported["images"], reference[0]["images"]):
        assert mine["caption"] == theirs["caption"]
        assert sorted(_fields(mine["objects"], ("label", "bbox", "description"))) == \
            sorted(_fields(theirs["objects"], ("label", "bbox", "description")))
        assert all(o["sources"] == ["labels"] and o["score"] == 1.0 for o in mine["objects"])
    assert f"{len(BROKEN)} images of --images_dir not in the labels" in capsys.readouterr().out

    # Scored against those labels: the file's own objects are perfect; the table and sweep come from the kept boxes.
    metrics = tmp_path / "metrics.json"
    assert evaluate_annotations.main(["--annotations", str(kept_file), "--ground_truth", str(coco),
                                      "--output_file", str(metrics), "--sweep"]) == 0
    m = json.loads(metrics.read_text())
    # Precision and recall count the objects' own labels; mAP also ranks the runner-up labels of merged objects
    # (label_candidates) as class hypotheses of their boxes, so it need not reach 1 here.
    assert (m["precision"], m["recall"]) == (1.0, 1.0)
    assert m["images"]["evaluated"] == len(GOOD) and m["images"]["skipped_in_annotations"] == []
    file_row = {k: m[k] for k in ("map", "map50", "precision", "recall", "detections")}
    assert {k: m["detectors"]["yolo + rtdetr wbf"][k] for k in file_row} == file_row
    assert m["recommended"]["flags"].startswith("--fusion wbf --detector_weights 1 1 --iou_threshold 0.55")
    assert m["qa_truth"]["share"] == 1.0 and m["qa_truth"]["labelled_twice"] == 0  # perfect objects: every answer true
    out = capsys.readouterr().out
    assert "| yolo |" in out and "| rtdetr |" in out and "recommended: --fusion" in out


def test_two_shards_merged_equal_one_run(reference, tiny_models, images_dir, tmp_path):
    parts = []
    for k in range(2):
        part = tmp_path / f"part{k}.json"
        assert data_annotation.main(args_for(tiny_models, images_dir, part, "--num_shards", "2",
                                             "--shard_index", str(k))) == 0
        parts.append(part)
    shard0 = load_annotations(parts[0])
    assert 0 < len(shard0["images"]) < len(GOOD) and shard0["meta"]["shard"] == {"index": 0, "count": 2}
    merged = tmp_path / "merged.json"
    assert merge_annotations.main(["--input_files", *map(str, parts), "--output_file", str(merged)]) == 0
    assert load_annotations(merged) == reference[0]
    # A missing shard is refused.
    assert merge_annotations.main(["--input_files", str(parts[0]), "--output_file", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_two_processes_under_torchrun_equal_one_run(reference, tiny_models, images_dir, tmp_path):
    out = tmp_path / "annotations.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "vlm_annotation" / "data_annotation.py"), *args_for(tiny_models, images_dir, out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert load_annotations(out) == reference[0]
    assert not list(tmp_path.glob("*.progress*"))


def test_bad_input_is_one_line_and_exit_2(tiny_models, images_dir, tmp_path, capsys):
    out = tmp_path / "a.json"
    cases = [
        (args_for(tiny_models, tmp_path / "missing", out), "--images_dir"),
        (args_for(tiny_models, tmp_path, out), "no images found"),
        (["--yolo_model", str(tmp_path / "nope.pt")], "--yolo_model"),
        (["--class_map", str(tmp_path / "nope.json")], "nope.json"),
    ]
    bad_prompts = tmp_path / "prompts.json"
    bad_prompts.write_text('{"glass": ')
    cases.append((["--prompts", str(bad_prompts)], "prompts.json"))
    no_processor = args_for(tiny_models, images_dir, out)
    del no_processor[no_processor.index("--detr_processor"):no_processor.index("--detr_processor") + 2]
    cases.append((no_processor, "give --detr_processor"))
    (tmp_path / "a_dir").mkdir()
    cases.append((args_for(tiny_models, images_dir, tmp_path / "a_dir"), "--output_file"))
    good_prompts = tmp_path / "good_prompts.json"
    good_prompts.write_text('{"glass": "a glass lying on"}')
    cases.append((args_for(tiny_models, images_dir, good_prompts) + ["--prompts", str(good_prompts)],
                  "is the same file as --prompts"))
    cases.append((args_for(tiny_models, images_dir, tmp_path / "out.jpg"), "is an image path"))
    cases.append((["--seed", "-1"], "--seed must be in"))
    cases.append((["--device", "bogus"], "--device bogus: not a device"))
    for argv, needle in cases:
        full = argv if "--images_dir" in argv else args_for(tiny_models, images_dir, out) + argv
        assert data_annotation.main(full) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not progress_path(out).exists()
    assert good_prompts.read_text() == '{"glass": "a glass lying on"}'


def test_all_images_unreadable_exits_non_zero(tiny_models, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("text")
    out = tmp_path / "a.json"
    assert data_annotation.main(args_for(tiny_models, bad, out)) == 1
    assert "none of the 2 images could be read" in capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["images"] == [] and [s["image"] for s in data["skipped"]] == ["a.jpg", "b.png"]


def test_class_map_prompts_and_nms(tiny_models, images_dir, tmp_path):
    class_map = tmp_path / "class_map.json"
    class_map.write_text(json.dumps({"yolo": {"plastic": None, "paper": "cardboard"},
                                     "rtdetr": {"plastic": None, "Paper": "cardboard"}}))
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps({"__image__": "a photo of", "cardboard": "a picture of cardboard next to"}))
    out = tmp_path / "a.json"
    argv = args_for(tiny_models, images_dir, out, "--class_map", str(class_map), "--prompts", str(prompts_file),
                    "--fusion", "nms", "--max_images", "3")
    assert data_annotation.main(argv) == 0
    data = load_annotations(out)
    assert [r["image"] for r in data["images"]] == GOOD[:2] and [s["image"] for s in data["skipped"]] == BROKEN[:1]
    labels = {o["label"] for r in data["images"] for o in r["objects"]}
    assert "plastic" not in labels and "paper" not in labels and labels
    asked = {q["question"] for r in data["images"] for q in r["qa"] if q["type"] == "exists"}
    assert not any("plastic" in q or "paper" in q for q in asked)
    assert data["meta"]["prompts"]["cardboard"] == "a picture of cardboard next to"
    assert data["meta"]["fusion"] == "nms"


def _tiny_blip2(out: Path) -> Path:
    """A tiny BLIP-2 (ViT + Q-Former + OPT) with the tiny LLaVA's byte-level tokenizer."""
    import torch
    from tokenizers import Tokenizer
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
        PreTrainedTokenizerFast,
    )

    from fixtures.tiny_models import build_tokenizer

    base = build_tokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(base.backend_tokenizer.to_str()),
                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                               tokenizer=tok, num_query_tokens=4)
    tok = processor.tokenizer
    torch.manual_seed(0)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8).to_dict(),
        qformer_config=Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, encoder_hidden_size=32,
                                          vocab_size=len(tok)).to_dict(),
        text_config=OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                              num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id).to_dict(),
        num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    Blip2ForConditionalGeneration(config).eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_blip2_captioner_batches_like_single_calls(tmp_path):
    from vlm_annotation.describer import Captioner
    captioner = Captioner(str(_tiny_blip2(tmp_path / "blip2")), "cpu", batch_size=8, max_new_tokens=6)
    assert captioner.kind == "blip-2" and captioner.processor.tokenizer.padding_side == "left"
    images = [Image.new("RGB", (50 + 10 * i, 40), (40 * i, 120, 60)) for i in range(4)]
    prompts = ["a photo of a glass lying on", "a photo of a can lying on", "a picture of",
               "a photo of a glass lying on"]
    batched = captioner.caption(images, prompts)
    assert batched == [captioner.caption([im], [p])[0] for im, p in zip(images, prompts)]
    raw = captioner._generate(images[:1], prompts[:1])[0]
    assert raw.lower().startswith("a photo of a glass lying on")  # BLIP-2 echoes the prompt ...
    assert not batched[0].startswith("a photo of")                 # ... which is stripped
