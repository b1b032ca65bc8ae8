"""world/pretrain_lm.py: the world VLM's language model pretrained on the world's text, and make_llava.py
--language_model_from, which starts a new world LLaVA from it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from world.make_world import write_world
from world.pretrain_lm import POSITION, SIZE, encode, field_right, text_pairs

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["--vision_width", "32", "--vision_layers", "1", "--text_width", "32", "--text_layers", "1",
         "--text_intermediate", "64", "--image_size", "32", "--patch", "8"]


@pytest.fixture(scope="module")
def tiny_world_llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    write_world(root / "world", 30, 0, seed=1)
    base = root / "llava_random"
    subprocess.run([sys.executable, str(ROOT / "world" / "make_llava.py"), "--world", str(root / "world"),
                    "--out", str(base), *SIZES], check=True, capture_output=True, timeout=300)
    return root, base


def _state(path: Path) -> dict:
    from transformers import LlavaForConditionalGeneration
    return LlavaForConditionalGeneration.from_pretrained(path).state_dict()


def test_text_pairs_are_the_questions_convert_writes_for_llava_1_5(tiny_world_llava):
    root, _ = tiny_world_llava
    coco = json.loads((root / "world" / "train.json").read_text())
    pairs = text_pairs(coco, seed=0, qa_types={"region_description", "grounding"})
    assert pairs and {t for t, _, _ in pairs} == {"region_description", "grounding"}
    for qtype, question, answer in pairs:
        assert "<image>" not in question and "<box:" not in question + answer
        if qtype == "grounding":  # the answer is the box, in LLaVA-1.5's frame (two decimals)
            assert answer.startswith("[0.") or answer.startswith("[1.")
        else:
            assert question.startswith("Please provide a short description for this") and "[" in question
            assert POSITION.search(answer) and SIZE.search(answer)


def test_encode_masks_the_question_and_maps_answer_tokens_to_their_characters(tiny_world_llava):
    from transformers import AutoProcessor
    _, base = tiny_world_llava
    tokenizer = AutoProcessor.from_pretrained(base).tokenizer
    answer = "Here is a can. The can is on the sand, at the top of the image. It is small."
    ids, labels, spans = encode(tokenizer, "Please provide a short description for this region: [0.1, 0.2, 0.3, 0.4]",
                                answer, max_length=200)
    n_answer = sum(label != -100 for label in labels)
    assert len(ids) == len(labels) and labels[:len(ids) - n_answer] == [-100] * (len(ids) - n_answer)
    assert labels[-1] == ids[-1] == tokenizer.eos_token_id
    assert len(spans) == n_answer  # one span per answer token, the end of text last
    decoded = tokenizer.decode(ids[len(ids) - n_answer:-1])
    assert decoded.strip() == answer
    # every answer character is covered by the spans, in order
    assert spans[0][0] <= 0 and spans[-2][1] == len(answer) and all(a[1] <= b[1] for a, b in zip(spans, spans[1:]))


def test_field_right_needs_every_token_of_the_field():
    answer = "The can is on the sand, at the top left of the image. It is small."
    start = answer.index("at the top")
    end = answer.index(". It")
    spans = [(0, start), (start, start + 6), (start + 6, end), (end, len(answer))]
    assert field_right(answer, spans, [False, True, True, False], POSITION) is True
    assert field_right(answer, spans, [True, True, False, True], POSITION) is False
    assert field_right("There are 3 objects in this image.", [(0, 5)], [True], POSITION) is None
    assert field_right(answer, spans, [True, True, True, True], SIZE) is True


def test_pretraining_trains_the_language_model_only_and_make_llava_starts_from_it(tiny_world_llava, capsys):
    """pretrain_lm.py trains the language model and its head on text (the tower and projector untouched),
    scores the held-out scenes, writes the LLaVA (--out) and the language model with its tokenizer (--lm_out);
    make_llava.py --language_model_from puts that language model, bit for bit, into a new LLaVA with that
    tokenizer, and refuses one of other sizes or a folder with no model."""
    from transformers import AutoProcessor

    from world.make_llava import main as make_llava
    from world.pretrain_lm import main
    root, base = tiny_world_llava
    lm_dir, out = root / "lm", root / "llava_lm"
    assert main(["--coco", str(root / "world" / "train.json"), "--base_model", str(base), "--out", str(out),
                 "--lm_out", str(lm_dir), "--max_steps", "3", "--batch_size", "4", "--minutes", "5"]) == 0
    printed = capsys.readouterr().out
    assert "pretrained the language model for 3 steps" in printed and "region_description_position" in printed
    info = json.loads((lm_dir / "pretrain_info.json").read_text())
    assert info["steps"] == 3 and info["train_scenes"] == 29 and info["held_out"]["pairs"] > 0
    assert 0 <= info["held_out"]["region_description_position"] <= 1
    assert not (root / "lm.tmp").exists() and not (root / "llava_lm.tmp").exists()
    before, after = _state(base), _state(out)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("model.language_model.", "lm_head.")) for k in moved)
    assert "lm_head.weight" in moved

    built = root / "llava_from_lm"
    assert make_llava(["--world", str(root / "world"), "--out", str(built), *SIZES, "--seed", "1",
                       "--language_model_from", str(lm_dir)]) == 0
    assert "the language model of" in capsys.readouterr().out
    new = _state(built)
    language = [k for k in new if k.startswith(("model.language_model.", "lm_head."))]
    assert language and all(torch.equal(new[k], after[k]) for k in language)
    assert not torch.equal(new["model.multi_modal_projector.linear_1.weight"],
                           after["model.multi_modal_projector.linear_1.weight"])  # the rest as built, seed 1
    text = "USER: <image>\nHow many objects are there? ASSISTANT: There are 3 objects in this image."
    assert (AutoProcessor.from_pretrained(built).tokenizer(text)["input_ids"]
            == AutoProcessor.from_pretrained(base).tokenizer(text)["input_ids"])
    build_info = json.loads((built / "build_info.json").read_text())
    assert build_info["language_model_from"] == str(lm_dir) and build_info["language_model_pretraining"]["steps"] == 3
    # a whole LLaVA (pretrain_lm.py's --out) gives the same language model
    assert make_llava(["--world", str(root / "world"), "--out", str(root / "b2"), *SIZES,
                       "--language_model_from", str(out)]) == 0
    assert all(torch.equal(_state(root / "b2")[k], after[k]) for k in language)
    capsys.readouterr()
    wider = [v if v != "32" or k != 5 else "64" for k, v in enumerate(SIZES)]  # --text_width 64
    assert make_llava(["--world", str(root / "world"), "--out", str(root / "b3"), *wider,
                       "--language_model_from", str(lm_dir)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: --language_model_from: the language model in") and "'hidden_size': 32" in err
    assert not (root / "b3").exists()
    assert make_llava(["--world", str(root / "world"), "--out", str(root / "b4"), *SIZES,
                       "--language_model_from", str(root / "nothing")]) == 2
    assert "no config.json there" in capsys.readouterr().err


def test_bad_flags_are_one_line_errors(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "world" / "pretrain_lm.py"), "--coco", "x", "--base_model", "y",
                           "--out", str(tmp_path / "o"), "--max_steps", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].endswith(
        "--minutes, --max_steps, --batch_size and --learning_rate must be > 0")


def test_out_must_differ_from_the_base(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "world" / "pretrain_lm.py"), "--coco", "x", "--base_model",
                           str(tmp_path / "m"), "--out", str(tmp_path / "m")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].endswith(
        "--out must differ from --base_model (the base stays as it was)")
