"""train_vlm.py end to end on the tiny LLaVA: artefacts, memorisation, resume, full fine-tune, errors."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from fixtures.toy_data import write_toy_llava_dataset
from vlm_core.boxes import pad_to_square
from vlm_core.families import LANGUAGE_LORA_REGEX as LORA_TARGET_REGEX
from vlm_core.images import load_image
from vlm_core.prompts import PromptFormat
from vlm_training.train_vlm import main

# Tuned so that LoRA alone memorises the four toy answers in 60 steps (~5 s on two CPU cores):
# the smallest top-1 logit margin over the answer tokens is 0.44-0.51 for seeds 0-4 and 42.
MEMORISE = ["--use_lora", "--lora_r", "32", "--lora_alpha", "64", "--lora_dropout", "0", "--learning_rate", "5e-3",
            "--batch_size", "4", "--max_steps", "60"]


def base_args(toy, tiny_models, out) -> list[str]:
    json_path, image_dir, _ = toy
    return ["--train_data", str(json_path), "--image_dir", str(image_dir), "--output_dir", str(out),
            "--base_model", str(tiny_models["llava"])]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_llava_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def trained(toy, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "vlm_model"
    argv = base_args(toy, tiny_models, out) + MEMORISE + [
        "--val_data", str(toy[0]), "--train_projector", "--projector_lr", "1e-3", "--logging_steps", "5",
        "--eval_steps", "30", "--save_steps", "0", "--merge_lora"]
    assert main(argv) == 0
    return out


def generate_answers(model, processor, fmt, toy) -> list[str]:
    _, image_dir, records = toy
    answers = []
    for record in records:
        question = record["conversations"][0]["value"][len("<image>\n"):]
        image = pad_to_square(load_image(image_dir / record["image"]), processor.image_processor.image_mean)
        inputs = processor(text=[fmt.prompt(question, first=True)], images=[image], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
        answers.append(processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                                  skip_special_tokens=True).strip())
    return answers


def test_writes_every_artefact_and_loss_falls(trained, tiny_models):
    from transformers import AutoProcessor
    names = {p.name for p in trained.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "processor_config.json", "tokenizer.json",
            "prompt_format.json", "train_args.json", "metrics.json", "loss.png", "merged"} <= names
    assert not any(n.startswith("checkpoint-") for n in names)  # --save_steps 0
    assert (trained / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    processor = AutoProcessor.from_pretrained(trained)
    # the default --system_prompt auto: LLaVA v1's sentence for LLaVA-1.5's turn layout, saved with the model
    assert PromptFormat.load(trained) == PromptFormat.from_chat_template(processor).with_system_prompt("llava_v1")

    args = json.loads((trained / "train_args.json").read_text())
    assert args["base_model"] == str(tiny_models["llava"])
    assert (args["precision"], args["device"], args["lora_r"], args["lora_target_modules"]) == (
        "fp32", "cpu", 32, LORA_TARGET_REGEX)

    metrics = json.loads((trained / "metrics.json").read_text())
    steps = [e["step"] for e in metrics["train_loss"]]
    assert steps == [1] + list(range(5, 61, 5))
    losses = [e["loss"] for e in metrics["train_loss"]]
    assert losses[-1] < losses[0] - 1.0          # ln(700) = 6.55 at the start
    assert [e["step"] for e in metrics["eval_loss"]][:2] == [30, 60]
    assert metrics["final_eval_loss"] < metrics["eval_loss"][0]["loss"] < losses[0]
    assert metrics["global_step"] == 60
    assert metrics["train_runtime_s"] > 0 and metrics["train_samples_per_second"] > 0
    assert metrics["train_data"]["examples"] == 4 and metrics["train_data"]["dropped"] == 0
    # learning rates: cosine decay after warmup (ceil(3% of 60) = 2 steps), logged for the LoRA group
    lrs = [e["learning_rate"] for e in metrics["train_loss"]]
    assert max(lrs) <= 5e-3 and lrs[1] > lrs[-1] > 0


def test_lora_touches_only_the_language_model(trained):
    config = json.loads((trained / "adapter_config.json").read_text())
    assert config["target_modules"] == LORA_TARGET_REGEX
    assert config["modules_to_save"] == ["multi_modal_projector"]
    keys = list(load_file(trained / "adapter_model.safetensors"))
    lora = [k for k in keys if "lora_" in k]
    assert len(lora) == 2 * 7 * 2          # 2 decoder layers x 7 linear layers x (lora_A, lora_B)
    assert all("language_model" in k for k in lora)
    assert not any("vision_tower" in k for k in keys)
    assert any("multi_modal_projector" in k for k in keys)


def test_adapter_reloads_and_reproduces_every_trained_answer(trained, tiny_models, toy):
    """The proof that training works: greedy generation gives back every trained answer exactly."""
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    base = LlavaForConditionalGeneration.from_pretrained(tiny_models["llava"])
    untrained = generate_answers(base, AutoProcessor.from_pretrained(tiny_models["llava"]), PromptFormat(), toy)
    model = PeftModel.from_pretrained(base, trained).eval()
    processor, fmt = AutoProcessor.from_pretrained(trained), PromptFormat.load(trained)
    expected = [r["conversations"][1]["value"] for r in toy[2]]
    assert untrained != expected
    assert generate_answers(model, processor, fmt, toy) == expected

    merged_dir = trained / "merged"
    merged = LlavaForConditionalGeneration.from_pretrained(merged_dir).eval()
    assert generate_answers(merged, AutoProcessor.from_pretrained(merged_dir), PromptFormat.load(merged_dir),
                            toy) == expected


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resumed_run_ends_like_an_uninterrupted_one(mode, toy, tiny_models, tmp_path, capsys):
    # A full fine-tune matters as much as LoRA: transformers 5 saves LLaVA's weights under their legacy names,
    # and its Trainer reloads a checkpoint non-strictly, so a resume once restarted from the base weights.
    lora = ["--use_lora", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0"] if mode == "lora" else []
    common = lora + ["--learning_rate", "1e-2" if mode == "lora" else "1e-3",
                     "--batch_size", "2", "--max_steps", "6", "--save_steps", "3", "--logging_steps", "1"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(base_args(toy, tiny_models, whole) + common) == 0
    assert "trained 6 steps" in capsys.readouterr().out
    shutil.copytree(whole / "checkpoint-3", resumed / "checkpoint-3")
    assert main(base_args(toy, tiny_models, resumed) + common + ["--resume_from_checkpoint", "latest"]) == 0
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert a["global_step"] == b["global_step"] == 6
    assert b["resumed_from"].endswith("checkpoint-3") and a["resumed_from"] is None
    assert [e["step"] for e in b["train_loss"]] == [e["step"] for e in a["train_loss"]] == [1, 2, 3, 4, 5, 6]
    # same data order, same schedule: the same losses and the same learning rates after the restart
    for ea, eb in zip(a["train_loss"], b["train_loss"]):
        assert eb["loss"] == pytest.approx(ea["loss"], rel=1e-4)
        assert eb["learning_rate"] == pytest.approx(ea["learning_rate"], rel=1e-6)
    state = json.loads((resumed / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    weights = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    wa, wb = load_file(whole / weights), load_file(resumed / weights)
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_full_fine_tune_freezes_the_vision_tower(toy, tiny_models, tmp_path):
    from transformers import LlavaForConditionalGeneration
    out = tmp_path / "full"
    assert main(base_args(toy, tiny_models, out) + ["--batch_size", "4", "--max_steps", "2", "--learning_rate",
                                                   "1e-3", "--save_steps", "0"]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    base = LlavaForConditionalGeneration.from_pretrained(tiny_models["llava"]).state_dict()
    tuned = LlavaForConditionalGeneration.from_pretrained(out).state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert not any("vision_tower" in k for k in changed)
    assert any("language_model" in k for k in changed)
    assert any("multi_modal_projector" in k for k in changed)
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 2


def test_a_second_run_of_the_other_mode_leaves_no_stale_model(toy, tiny_models, tmp_path):
    from vlm_inference.vlm_inference import VLMInference
    out = tmp_path / "same_dir"
    quick = ["--batch_size", "4", "--max_steps", "1", "--save_steps", "0"]
    assert main(base_args(toy, tiny_models, out) + quick + ["--use_lora", "--lora_r", "4", "--merge_lora"]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()
    assert main(base_args(toy, tiny_models, out) + quick) == 0          # now a full fine-tune
    assert not (out / "adapter_config.json").exists() and not (out / "merged").exists()
    assert VLMInference(str(out), device="cpu").kind == "model"
    assert main(base_args(toy, tiny_models, out) + quick + ["--use_lora", "--lora_r", "4"]) == 0
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    assert VLMInference(str(out), device="cpu").kind == "adapter"


def test_never_writes_into_the_base_model_or_a_foreign_model(toy, tiny_models, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny_models["llava"], base)
    before = sorted((p.name, p.stat().st_size) for p in base.iterdir())
    quick = ["--use_lora", "--batch_size", "4", "--max_steps", "1", "--save_steps", "0"]
    json_path, image_dir, _ = toy
    common = ["--train_data", str(json_path), "--image_dir", str(image_dir), "--base_model", str(base)] + quick
    assert main(common + ["--output_dir", str(base)]) == 2
    assert "overlaps --base_model" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_models["llava"], foreign)
    assert main(common + ["--output_dir", str(foreign)]) == 2
    assert "holds a model that train_vlm.py did not write" in capsys.readouterr().err
    assert sorted((p.name, p.stat().st_size) for p in base.iterdir()) == before
    assert (foreign / "model.safetensors").is_file()


def _write(path, records):
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("case", ["escape", "absolute", "malformed", "missing_image", "4bit", "fp16", "seed",
                                  "nan_lr", "out_in_images"])
def test_bad_input_is_one_clear_line_and_exit_2(case, toy, tiny_models, tmp_path, capsys):
    json_path, image_dir, records = toy
    data = json.loads(json_path.read_text())
    extra = ["--use_lora"]
    if case == "escape":
        shutil.copy(image_dir / records[0]["image"], image_dir.parent / "outside.png")
        data[2]["image"] = "scenes/../../outside.png"
        expected = "record 2 (id 'scenes/blue.jpg#0'): "  # the message itself is llava_format's
    elif case == "absolute":
        data[1]["image"] = str(image_dir / records[0]["image"])
        expected = "record 1 (id 'scenes/green.png#0'): "
    elif case == "malformed":
        data[3]["conversations"][1] = {"from": "gpt"}
        expected = "record 3 (id 'scenes/sub/white.png#0'): conversations[1].value must be a non-empty string"
    elif case == "missing_image":
        data[0]["image"] = "scenes/nope.png"
        expected = "record 0 (id 'scenes/red.png#0'): image not found"
    elif case == "seed":
        extra += ["--seed", "-1"]
        expected = "--seed must be in 0..4294967295, got -1"
    elif case == "nan_lr":
        extra += ["--learning_rate", "nan"]
        expected = "--learning_rate must be a finite number"
    elif case == "out_in_images":
        expected = "--output_dir: "
    elif case == "4bit":
        extra.append("--load_in_4bit")
        expected = "--load_in_4bit (QLoRA) needs a CUDA GPU"
    else:
        extra.append("--fp16")
        expected = "--fp16 needs a CUDA GPU"
    if torch.cuda.is_available() and case in ("4bit", "fp16"):
        pytest.skip("a GPU is visible")
    bad = _write(tmp_path / "bad.json", data)
    out = image_dir / "model" if case == "out_in_images" else tmp_path / "out"
    argv = ["--train_data", str(bad), "--image_dir", str(image_dir), "--output_dir", str(out),
            "--base_model", str(tiny_models["llava"])] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    if case in ("escape", "absolute"):
        assert "escapes --image_dir" in err[0]
    assert not out.exists()


# --------------------------------------------------------------------------- flags (HfArgumentParser)
def test_any_trainer_option_is_a_flag_and_tensorboard_works_offline(toy, tiny_models, tmp_path):
    """Issue 10: --report_to / --lr_scheduler_type / --save_total_limit need no code of ours."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "tb"
    assert main(base_args(toy, tiny_models, out) + [
        "--use_lora", "--lora_r", "4", "--batch_size", "2", "--logging_steps", "1", "--report_to", "tensorboard",
        "--lr_scheduler_type", "linear", "--save_total_limit", "1", "--max_steps", "3", "--save_steps", "1",
        "--warmup_ratio", "0", "--learning_rate", "1e-3"]) == 0
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]      # at most one checkpoint kept
    events = list(out.rglob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("train/loss")] == [1, 2, 3]
    metrics = json.loads((out / "metrics.json").read_text())
    # linear decay from 1e-3 over 3 steps, no warmup (the Trainer logs the rate after each step's update)
    assert [e["learning_rate"] for e in metrics["train_loss"]] == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3])
    assert metrics["train_samples_per_second"] * metrics["train_runtime_s"] == pytest.approx(6)  # 3 steps x 2
    assert json.loads((out / "train_args.json").read_text())["training_args"]["lr_scheduler_type"] == "linear"


def test_the_guides_flags_map_onto_training_arguments(toy, tiny_models, tmp_path, capsys):
    from vlm_training.train_vlm import parse_args
    common = base_args(toy, tiny_models, tmp_path / "o")
    model, data, args = parse_args(common + ["--use_lora", "--batch_size", "3", "--num_epochs", "2",
                                             "--warmup_ratio", "0.1", "--no_group_by_length", "--bf16",
                                             "--optim", "adamw_torch", "--save_steps", "0"])
    assert (model.use_lora, data.val_data, args.per_device_train_batch_size, args.per_device_eval_batch_size,
            args.num_train_epochs, args.warmup_steps) == (True, None, 3, 3, 2.0, 0.1)
    assert (args.train_sampling_strategy, args.precision, args.bf16, args.optim.value) == (
        "random", "bf16", True, "adamw_torch")
    assert (args.save_strategy.value, args.eval_strategy, args.data_seed) == ("no", "no", 42)
    model, _, args = parse_args(common + ["--val_data", str(toy[0]), "--eval_steps", "5", "--dtype", "float32"])
    # defaults: LLaVA-1.5's LoRA recipe
    assert (model.lora_r, model.lora_alpha, model.projector_lr, args.learning_rate, args.lr_scheduler_type.value,
            args.warmup_steps, model.system_prompt) == (128, 256, None, 2e-4, "cosine", 0.03, "auto")
    # the projector's own rate: LLaVA-1.5's LoRA recipe with LoRA, --learning_rate in a full fine-tune
    assert parse_args(common + ["--use_lora"])[0].projector_lr == 2e-5
    assert parse_args(common + ["--use_lora", "--projector_lr", "1e-4"])[0].projector_lr == 1e-4
    assert (args.eval_strategy.value, args.eval_steps, args.precision, args.train_sampling_strategy) == (
        "steps", 5, "fp32", "group_by_length")
    with pytest.raises(SystemExit) as exit_help:
        parse_args(["--help"])
    assert exit_help.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--train_data", "--val_data", "--image_dir", "--output_dir", "--base_model", "--use_lora",
                 "--batch_size", "--num_epochs", "--lora_r", "--train_projector", "--projector_lr",
                 "--train_vision_tower", "--load_in_4bit", "--merge_lora", "--resume_from_checkpoint",
                 "--max_length", "--no_group_by_length", "--precision", "--fp32", "--system_prompt",
                 "--report_to", "--lr_scheduler_type", "--save_total_limit", "--deepspeed"):
        assert flag in text, flag
    from vlm_training.train_vlm import DataArguments, ModelArguments, VLMTrainingArguments
    ours = [f for cls in (ModelArguments, DataArguments) for f in dataclasses.fields(cls)]
    ours += [f for f in dataclasses.fields(VLMTrainingArguments) if f.name in VLMTrainingArguments.__annotations__]
    assert all(f.metadata.get("help") for f in ours), [f.name for f in ours if not f.metadata.get("help")]


@pytest.mark.parametrize("flags, expected", [
    (["--precision", "fp32", "--bf16"], "--precision fp32 and --bf16 disagree"),
    (["--dtype", "int3"], "--precision: 'int3' is not one of auto, fp32, bf16, fp16"),
    (["--lr_scheduler_type", "nope"], None),
    (["--system_prompt", " "], "--system_prompt: a system prompt cannot be blank"),
    (["--max_steps", "0"], "--max_steps and --eval_steps must be >= 1"),
    (["--deepspeed", "missing.json"], "--deepspeed: config file not found: missing.json"),
    (["--resume_from_checkpoint", "nowhere"], "--resume_from_checkpoint: nowhere cannot be resumed from: no readable"),
])
def test_bad_flags_are_one_line_and_exit_2(flags, expected, toy, tiny_models, tmp_path, capsys):
    out = tmp_path / "out"
    code = None
    try:
        code = main(base_args(toy, tiny_models, out) + flags)
    except SystemExit as e:  # argparse's own refusal of a value outside the choices
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    if expected:
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    else:
        assert "invalid choice: 'nope'" in err[-1]
    assert not out.exists()


# --------------------------------------------------------------------------- vision tower, system prompt
def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_train_vision_tower_full_and_with_lora(toy, tiny_models, tmp_path):
    """Issue 13: --train_vision_tower trains the CLIP tower (fully), in a full fine-tune and beside LoRA."""
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration
    quick = ["--batch_size", "4", "--max_steps", "2", "--learning_rate", "1e-3", "--save_steps", "0",
             "--train_vision_tower", "--system_prompt", "none"]
    full, lora = tmp_path / "full", tmp_path / "lora"
    assert main(base_args(toy, tiny_models, full) + quick + ["--vision_tower_lr", "5e-4"]) == 0
    base = LlavaForConditionalGeneration.from_pretrained(tiny_models["llava"]).state_dict()
    changed = _changed(base, LlavaForConditionalGeneration.from_pretrained(full).state_dict())
    assert any("vision_tower" in k for k in changed) and any("language_model" in k for k in changed)
    # A full fine-tune trains the projector at --learning_rate (LLaVA's mm_projector_lr unset), not LoRA's 2e-5:
    # two Adam steps at 1e-3 move its weights by about 2e-3 each, at 2e-5 by 4e-5.
    after = LlavaForConditionalGeneration.from_pretrained(full).state_dict()
    moved = max(float((after[k] - base[k]).abs().max()) for k in base if "multi_modal_projector" in k)
    assert moved > 1e-3
    assert json.loads((full / "train_args.json").read_text())["learning_rates"] == {
        "language_model": 1e-3, "projector": 1e-3, "vision_tower": 5e-4}

    assert main(base_args(toy, tiny_models, lora) + quick + ["--use_lora", "--lora_r", "4",
                                                           "--gradient_checkpointing"]) == 0
    assert json.loads((lora / "adapter_config.json").read_text())["modules_to_save"] == ["vision_tower"]
    keys = list(load_file(lora / "adapter_model.safetensors"))
    assert any("vision_tower" in k and "lora_" not in k for k in keys)
    assert not any("vision_tower" in k and "lora_" in k for k in keys)     # LoRA stays on the language model
    merged = PeftModel.from_pretrained(LlavaForConditionalGeneration.from_pretrained(tiny_models["llava"]),
                                       lora).merge_and_unload().state_dict()
    vision = {k for k in _changed(base, merged) if "vision_tower" in k}
    assert vision and not any("multi_modal_projector" in k for k in _changed(base, merged))
    record = json.loads((lora / "train_args.json").read_text())
    assert record["train_vision_tower"] is True and record["projector_lr"] == 2e-5
    assert record["learning_rates"] == {"language_model": 1e-3, "projector": None, "vision_tower": 1e-3}


def test_system_prompt_is_saved_with_the_model(toy, tiny_models, tmp_path):
    quick = ["--use_lora", "--lora_r", "4", "--batch_size", "4", "--max_steps", "1", "--save_steps", "0"]
    out = tmp_path / "sys"
    assert main(base_args(toy, tiny_models, out) + quick + ["--system_prompt", "Answer briefly."]) == 0
    fmt = PromptFormat.load(out)
    assert fmt.system_prompt == "Answer briefly."
    assert fmt.prompt("Q?") == "Answer briefly. USER: <image>\nQ? ASSISTANT:"
    assert main(base_args(toy, tiny_models, out) + quick + ["--system_prompt", "none"]) == 0
    assert PromptFormat.load(out).prompt("Q?") == "USER: <image>\nQ? ASSISTANT:"
