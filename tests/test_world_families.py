"""world/make_family.py (issue 26): a world VLM of every family, each of its own class, processor, chat template and
box frame, starting from the committed pretrained language model (and CLIP tower where the family has one); and
world/report.py families, the table world/families.sh ends with. The families learning on a world run:
tests/test_world.py (test_two_families_learn_in_their_own_frames)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlm_core import families
from world import report
from world.make_family import CLIP_FAMILIES, FAMILY_NAMES, QWEN_FAMILIES
from world.make_world import write_world

ROOT = Path(__file__).resolve().parents[1]
LM, TOWER, TOWERS = (ROOT / "world" / "models" / d for d in ("lm", "tower", "towers"))


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    write_world(root / "world", 6, 0, seed=2)
    return root


def _make(world_dir, family, out, *extra):
    return subprocess.run([sys.executable, str(ROOT / "world" / "make_family.py"), "--family", family, "--world",
                           str(world_dir / "world"), "--out", str(out), *extra], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if f != "llava"])
def test_every_family_is_built_of_its_own_class_with_the_world_language_model(world_dir, family):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    out = world_dir / family
    # the pretrained tower of the family's kind: the CLIP one, or a Qwen family's own (world/models/towers/<family>)
    tower_dir = TOWER if family in CLIP_FAMILIES else TOWERS / family
    proc = _make(world_dir, family, out, "--vision_tower_from", str(tower_dir), "--language_model_from", str(LM))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"built the world {family}" in proc.stdout
    spec = families.detect_family(out)
    assert spec.name == family and families.frame_for(out).family == family
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(model).__name__ == spec.model_class
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == spec.processor_class
    # about 64 image tokens for a square world image, as the world LLaVA (anyres families: base view + one tile)
    assert 60 <= families.image_token_count(processor, 128, 128) <= 140
    # the world's pretrained language model, copied by name: on text the family's model answers as it does (Qwen3's
    # q/k norms are new, so it starts near, not at, it); the family's own special tokens are appended
    lm = AutoModelForCausalLM.from_pretrained(LM).eval()
    lm_tokenizer = AutoTokenizer.from_pretrained(LM)
    ids = lm_tokenizer("How many objects are there? There are 3 objects.", add_special_tokens=False,
                       return_tensors="pt").input_ids
    with torch.no_grad():
        ours = model(input_ids=ids).logits[..., :len(lm_tokenizer)]
        theirs = lm(input_ids=ids).logits
    if family == "qwen3_vl":
        assert not torch.allclose(ours, theirs, atol=1e-4)
    else:
        assert torch.allclose(ours, theirs, atol=1e-4)
    tokenizer = processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(ids[0].tolist()) == lm_tokenizer.convert_ids_to_tokens(ids[0].tolist())
    if family in QWEN_FAMILIES:
        assert tokenizer.eos_token == "<|im_end|>" and tokenizer.image_token == "<|image_pad|>"
        assert tokenizer("a", add_special_tokens=True).input_ids == tokenizer("a", add_special_tokens=False).input_ids
    # the pretrained CLIP tower where the family's tower is CLIP, bit for bit
    info = json.loads((out / "build_info.json").read_text())
    assert info["family"] == family and info["language_model_tensors_copied"] > 0
    if family in CLIP_FAMILIES:
        from transformers import CLIPVisionModel
        tower = CLIPVisionModel.from_pretrained(TOWER).state_dict()
        mine = model.model.vision_tower.state_dict()
        assert all(torch.equal(tower[k], mine[k]) for k in tower)
        assert info["vision_tower_from"] == str(TOWER)
    else:  # its own architecture, pretrained on its own tokens
        from safetensors.torch import load_file
        saved = load_file(str(tower_dir / "model.safetensors"))
        mine = model.model.visual.state_dict()
        assert set(saved) == set(mine) and all(torch.equal(saved[k], mine[k]) for k in saved)
        assert info["vision_tower_pretraining"]["steps"] == 1200


def test_random_language_model_builds_its_own_tokenizer(world_dir):
    out = world_dir / "qwen2_vl_random"
    proc = _make(world_dir, "qwen2_vl", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((out / "build_info.json").read_text())
    assert info["language_model_from"] is None and info["language_model_tensors_copied"] == 0


def test_bad_arguments_are_one_line_errors(world_dir, tmp_path):
    proc = _make(world_dir, "qwen2_5_vl", tmp_path / "x", "--language_model_from", str(tmp_path))
    assert proc.returncode == 2 and "no config.json there" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "world" / "make_family.py"), "--family", "qwen2_vl", "--world",
                           str(tmp_path), "--out", str(tmp_path / "y")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no train.json there" in proc.stderr and "Traceback" not in proc.stderr
    proc = _make(world_dir, "gemma", tmp_path / "z")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def _write_family_run(folder: Path, model: float, majority: float, untrained: float) -> None:
    """The files world/report.py reads of one family's run: evaluate.py's metrics and api_eval.py's scores."""
    per_type = {t: {"n": 10, "accuracy": model} for t in ("surface", "location")}
    per_type["count"] = {"n": 10, "accuracy": model, "count_exact": model}
    for who, value in (("model", model), ("majority", majority), ("untrained", untrained), ("chance", 0.1)):
        rows = {t: {**row, "accuracy": value, **({"count_exact": value} if t == "count" else {})}
                for t, row in per_type.items()}
        (folder / "eval").mkdir(parents=True, exist_ok=True)
        (folder / "eval" / f"{who}.json").write_text(json.dumps({"per_type": rows}))
    api = {"describe_object": {f: {"n": 10, "accuracy": model} for f in report.API_FIELDS},
           "region_label": {"n": 10, "accuracy": model},
           "grounding": {"n": 10, "acc50": model, "mean_iou": model / 2, "unparsed": 0.0}}
    (folder / "api").mkdir(parents=True, exist_ok=True)
    (folder / "api" / "model.json").write_text(json.dumps(api))
    (folder / "api" / "untrained.json").write_text(json.dumps(api | {"region_label": {"n": 10, "accuracy": untrained},
                                                                     "grounding": {"n": 10, "acc50": untrained,
                                                                                   "mean_iou": 0.0, "unparsed": 1.0}}))
    (folder / "api" / "baselines.json").write_text(json.dumps({"majority": {"region_label": {"accuracy": majority},
                                                                            "grounding": {"acc50": majority}}}))
    (folder / "timings.tsv").write_text("vlm_train\t312.4\nwall\t400.0\n")
    (folder / "vlm_model").mkdir(parents=True, exist_ok=True)
    (folder / "vlm_model" / "train_args.json").write_text(json.dumps({
        "train_vision_tower": False, "training_args": {"max_steps": 200, "per_device_train_batch_size": 16}}))


def test_families_report_gathers_every_family_in_order_and_writes_the_readme(tmp_path, capsys):
    run = tmp_path / "run"
    _write_family_run(run, 0.5, 0.2, 0.0)                          # the world run: LLaVA-1.5's row
    _write_family_run(run / "families" / "qwen3_vl", 0.4, 0.2, 0.1)
    _write_family_run(run / "families" / "vip_llava", 0.6, 0.2, 0.0)
    # families.sh's replay: the pool's grounding records it mixed into vip_llava's training file
    (run / "families" / "vip_llava" / "replay_llava.jsonl").write_text('{"id": "pool/a#0"}\n' * 3)
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{report.FAMILIES_BEGIN}\nold\n{report.FAMILIES_END}\nbottom\n")
    assert report.main(["families", "--run_dir", str(run), "--readme", str(readme), "--seconds", "99"]) == 0
    results = json.loads((run / "families.json").read_text())
    assert list(results) == ["llava", "vip_llava", "qwen3_vl"]
    # a LLaVA-1.5 trained by families.sh is its row, not the world run's VLM
    _write_family_run(run / "families" / "llava", 0.7, 0.2, 0.0)
    assert report.family_results(run)["llava"]["count"]["model"] == 0.7
    q3 = results["qwen3_vl"]
    assert q3["count"] == {"metric": "count_exact", "model": 0.4, "majority": 0.2, "untrained": 0.1, "n": 10}
    assert q3["region_label"]["model"] == 0.4 and q3["region_label"]["majority"] == 0.2
    assert q3["grounding"]["acc50"] == {"model": 0.4, "majority": 0.2, "untrained": 0.1, "chance": None}
    assert q3["grounding"]["model"] == 0.4 and q3["grounding"]["unparsed"]["untrained"] == 1.0
    assert q3["vlm_train_seconds"] == 312.4 and q3["seconds"] == 400.0
    text = readme.read_text()
    assert text.startswith("top\n") and text.endswith("bottom\n") and "old" not in text
    assert ("Generated by `make world-families` (3 families, each trained 200 steps of 16 plus 3 grounding records "
            "replayed from the pool their bases were pretrained on, 99 s") in text
    assert results["vip_llava"]["training"] == {"steps": 200, "batch_size": 16, "vision_tower_trained": False,
                                                "scenes": None, "replay_records": 3}
    assert results["qwen3_vl"]["training"]["replay_records"] is None
    assert "| qwen3_vl | 0.400 (0.200 / 0.100) |" in text and "| training s | wall s |" in text
    assert "| 312 | 400 |" in text  # qwen3_vl's training and whole path, from its timings.tsv
    assert (run / "families.md").read_text().splitlines()[0] == capsys.readouterr().out.splitlines()[0]


def test_families_report_without_families_is_a_one_line_error(tmp_path, capsys):
    assert report.main(["families", "--run_dir", str(tmp_path)]) == 2
    assert "no trained family there" in capsys.readouterr().err


def test_covering_grid_is_the_padded_square_map_on_any_grid():
    from world.pretrain_vision import covering_grid, covering_objects
    # a box over the left half of a 2x4 grid, a smaller one on top of its top-left cell
    assert covering_grid([[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.2, 0.4]], 2, 4) == [1, 0, -1, -1, 0, 0, -1, -1]
    # a square image has no padding: the padded square's map is the grid's
    assert covering_objects([[0, 0, 64, 128]], 128, 128, 4) == covering_grid([[0.0, 0.0, 0.5, 1.0]], 4, 4)


@pytest.mark.parametrize("family", ["qwen2_5_vl"])
def test_a_qwen_tower_is_pretrained_on_its_own_tokens_and_taken_by_make_family(world_dir, family, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from world.pretrain_vision import load_token_pool, main
    base = world_dir / f"{family}_random"
    assert _make(world_dir, family, base).returncode == 0
    coco = json.loads((world_dir / "world" / "train.json").read_text())
    model = AutoModelForImageTextToText.from_pretrained(base)
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(base)
    pool = load_token_pool(coco, world_dir / "world" / "train_images", processor.image_processor, 2, boxed_views=1)
    # one target per token the language model reads: the merged grid of each view's own resized image
    from world.pretrain_vision import qwen_pixels
    pixels, grid = qwen_pixels(pool, [0, 1, 2], processor.image_processor)
    assert torch.equal(grid, pool["grid"][:3]) and len(pixels) == int(grid.prod(-1).sum())
    for thw, targets in zip(pool["grid"], pool["maps"]):
        assert len(targets) == int(thw.prod()) // 4
    with torch.no_grad():
        feats = model.model.get_image_features(pixels, grid).pooler_output
    assert [len(f) for f in feats] == [len(pool["maps"][i]) for i in range(3)]

    out, tower = world_dir / f"{family}_pretrained", world_dir / f"{family}_tower"
    assert main(["--coco", str(world_dir / "world" / "train.json"), "--image_dir", str(world_dir / "world" /
                 "train_images"), "--base_model", str(base), "--out", str(out), "--tower_out", str(tower),
                 "--max_steps", "2", "--batch_size", "2", "--minutes", "5", "--seed", "0"]) == 0
    assert "pretrained the vision tower for 2 steps" in capsys.readouterr().out
    start = AutoModelForImageTextToText.from_pretrained(base).state_dict()
    trained = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    changed = {k for k in start if not torch.equal(start[k], trained[k])}
    assert changed and all(k.startswith("model.visual.") for k in changed)  # the language model as it was
    assert any(".merger." in k for k in changed) and any(".blocks.0." in k for k in changed)
    info = json.loads((tower / "pretrain_info.json").read_text())
    assert info["steps"] == 2 and info["views"] >= len(pool["image"])  # every image, outlined twice by default
    # make_family.py starts a new world model of the family from that tower, bit for bit
    again = world_dir / f"{family}_from_tower"
    proc = _make(world_dir, family, again, "--vision_tower_from", str(tower))
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = load_file(str(tower / "model.safetensors"))
    built = AutoModelForImageTextToText.from_pretrained(again).model.visual.state_dict()
    assert all(torch.equal(saved[k], built[k]) for k in saved)
    assert json.loads((again / "build_info.json").read_text())["vision_tower_pretraining"]["steps"] == 2
    # a tower of another kind is refused in one line
    proc = _make(world_dir, "qwen3_vl", world_dir / "q3", "--vision_tower_from", str(tower))
    assert proc.returncode == 2 and "qwen3_vl's is a qwen3_vl_vision" in proc.stderr and "Traceback" not in proc.stderr
    proc = _make(world_dir, "vip_llava", world_dir / "vip", "--vision_tower_from", str(tower))
    assert proc.returncode == 2 and "vip_llava's is CLIP" in proc.stderr


def test_families_script_refuses_an_unknown_family_before_any_work(tmp_path):
    import os
    env = dict(os.environ, PYTHON=sys.executable, WORLD_DIR=str(tmp_path / "run"), WORLD_FAMILIES="llava gemma3")
    proc = subprocess.run(["bash", str(ROOT / "world" / "families.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown family 'gemma3'" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing run, nothing written


def test_a_family_language_model_learns_its_own_frame_and_make_family_takes_it(world_dir, capsys):
    """pretrain_lm.py on a Qwen2.5-VL world model renders the text in that family's frame and answer format (pixel
    JSON after smart_resize), trains only the language model, and --lm_out holds its tensors by name, which
    make_family.py --family_lm loads bit for bit; another family's is refused in one line."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from world.pretrain_lm import main, text_pairs

    family = "qwen2_5_vl"
    base = world_dir / f"{family}_lm_base"
    assert _make(world_dir, family, base, "--language_model_from", str(LM)).returncode == 0
    coco = json.loads((world_dir / "world" / "train.json").read_text())
    frame = families.frame_for(base)
    rec = text_pairs(coco, 0, {"grounding"}, frame)[0]
    answer = json.loads(rec[2])  # {"bbox_2d": [x1, y1, x2, y2], "label": ...}: Qwen2.5-VL's own answer
    assert set(answer) == {"bbox_2d", "label"} and all(isinstance(v, int) for v in answer["bbox_2d"])
    assert rec == text_pairs(coco, 0, {"grounding"}, frame)[0]  # the same text every time

    out, lm_out = world_dir / f"{family}_lm_out", world_dir / f"{family}_lm_only"
    assert main(["--coco", str(world_dir / "world" / "train.json"), "--base_model", str(base), "--out", str(out),
                 "--lm_out", str(lm_out), "--max_steps", "2", "--batch_size", "4", "--minutes", "5"]) == 0
    assert "pretrained the language model for 2 steps" in capsys.readouterr().out
    info = json.loads((lm_out / "pretrain_info.json").read_text())
    assert info["family"] == family and info["frame"] == frame.describe()
    start = AutoModelForImageTextToText.from_pretrained(base).state_dict()
    trained = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    changed = {k for k in start if not torch.equal(start[k], trained[k])}
    assert changed and all(k.startswith(("model.language_model.", "lm_head.")) for k in changed)
    saved = load_file(str(lm_out / "model.safetensors"))
    assert changed <= set(saved) and all(k.startswith(("model.language_model.", "lm_head.")) for k in saved)

    again = world_dir / f"{family}_from_family_lm"
    proc = _make(world_dir, family, again, "--language_model_from", str(LM), "--family_lm", str(lm_out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "and language model in its own frame" in proc.stdout
    built = AutoModelForImageTextToText.from_pretrained(again).state_dict()
    assert all(torch.equal(saved[k], built[k]) for k in saved)
    assert json.loads((again / "build_info.json").read_text())["family_lm"] == str(lm_out)

    proc = _make(world_dir, "qwen2_vl", world_dir / "qwen2_vl_wrong_lm", "--language_model_from", str(LM),
                 "--family_lm", str(lm_out))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "a language model pretrained for qwen2_5_vl, not qwen2_vl" in proc.stderr


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_the_committed_family_language_models_load_into_their_family(world_dir, family):
    """world/models/family_lms/<family> (what families.sh loads by default) fits the family's world model built from
    the committed language model, tensor for tensor, and was pretrained in that family's frame."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    folder = ROOT / "world" / "models" / "family_lms" / family
    info = json.loads((folder / "pretrain_info.json").read_text())
    out = world_dir / f"{family}_committed_lm"
    tower_dir = TOWER if family in CLIP_FAMILIES else TOWERS / family
    proc = _make(world_dir, family, out, "--vision_tower_from", str(tower_dir), "--language_model_from", str(LM),
                 "--family_lm", str(folder))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert info["family"] == family and info["frame"] == families.frame_for(out).describe()
    saved = load_file(str(folder / "model.safetensors"))
    built = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert all(torch.equal(saved[k], built[k]) for k in saved)


def test_families_script_replays_the_bases_pool_in_the_familys_frame(tmp_path):
    """world/families.sh on a tiny finished world run, one family from its committed grounding base: the pool the base
    was pretrained on is drawn again, its grounding questions converted in the family's frame under images/pool, and
    mixed after the world's split (under images/world) into the file train_vlm.py reads; the baselines keep the
    world's split alone. Budgets far too small to learn: this checks the plumbing (the replay's effect on locate:
    docs/world.md, session 18)."""
    import os
    run = tmp_path / "run"
    write_world(run / "world", 0, 6, seed=3)
    subprocess.run([sys.executable, str(ROOT / "world" / "make_truth.py"), "--coco", str(run / "world" / "heldout.json"),
                    "--output_file", str(run / "test_truth.json")], check=True, capture_output=True, timeout=120)
    for split in ("train", "val"):  # the world run's splits: here the test scenes' truth, enough for plumbing
        (run / f"{split}.json").write_text((run / "test_truth.json").read_text())
    (run / "results.json").write_text("{}")
    (run / "api").mkdir()
    subprocess.run([sys.executable, str(ROOT / "world" / "api_eval.py"), "baselines", "--train", str(run / "train.json"),
                    "--truth", str(run / "test_truth.json"), "--output_file", str(run / "api" / "baselines.json")],
                   check=True, capture_output=True, timeout=120)
    env = dict(os.environ, PYTHON=sys.executable, WORLD_DIR=str(run), WORLD_FAMILIES="qwen3_vl",
               WORLD_FAMILY_STEPS="2", WORLD_FAMILY_BATCH="2", WORLD_FAMILY_REPLAY="5", WORLD_API_OBJECTS="4")
    env.pop("WORLD_README", None)
    proc = subprocess.run(["bash", str(ROOT / "world" / "families.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    d = run / "families" / "qwen3_vl"
    pool = json.loads((run / "families" / "replay_pool" / "train.json").read_text())
    assert len(pool["images"]) == 5  # make_world.py --seed 5, as the bases' COMMAND draws their pool
    replay = [json.loads(line) for line in (d / "replay_llava.jsonl").read_text().splitlines()]
    assert replay and all(r["image"].startswith("pool/") and set(r["qa_types"]) == {"grounding"} for r in replay)
    assert all((d / "images" / r["image"]).is_file() for r in replay)
    # in Qwen3-VL's frame (0..1000 JSON), as the base was pretrained
    assert '"bbox_2d"' in replay[0]["conversations"][1]["value"]
    world = json.loads((d / "train_llava.json").read_text())
    mix = [json.loads(line) for line in (d / "train_mix.jsonl").read_text().splitlines()]
    assert mix == [r | {"id": f"world/{r['id']}", "image": f"world/{r['image']}"} for r in world] + replay
    val = [json.loads(line) for line in (d / "val_mix.jsonl").read_text().splitlines()]
    assert val and all((d / "images" / r["image"]).is_file() for r in val)
    args = json.loads((d / "vlm_model" / "train_args.json").read_text())
    assert Path(args["train_data"]) == d / "train_mix.jsonl" and Path(args["image_dir"]) == d / "images"
    fam = json.loads((run / "families.json").read_text())
    assert fam["qwen3_vl"]["training"]["replay_records"] == len(replay)
    assert fam["qwen3_vl"]["training"]["scenes"] == len(world)


def test_families_script_refuses_a_bad_replay_before_any_work(tmp_path):
    import os
    env = dict(os.environ, PYTHON=sys.executable, WORLD_DIR=str(tmp_path / "run"), WORLD_FAMILY_REPLAY="all")
    proc = subprocess.run(["bash", str(ROOT / "world" / "families.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "WORLD_FAMILY_REPLAY" in proc.stderr and not (tmp_path / "run").exists()
