"""train_vlm.py --eval_generate (issue 25): at every evaluation the model answers a fixed sample of the validation
questions as predict.py asks them, scored per question type as evaluate.py scores them; the scores reach the
log (TensorBoard), metrics.json and loss.png, pick the best checkpoint, stop training early, survive a resume and
equal what predict.py + evaluate.py say about the same checkpoint. On the tiny real LLaVA and the toy data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fixtures.toy_data import write_toy_llava_dataset
from vlm_core.io_utils import InputError
from vlm_core.scoring import score_predictions
from vlm_training.generation_eval import (
    PREDICTIONS_FILE,
    SAMPLES_FILE,
    check_metric_for_best_model,
    draw_samples,
    flatten,
)
from vlm_training.train_vlm import main

REPO = Path(__file__).resolve().parents[1]
# LoRA memorises the four toy answers in ~30 steps (tests/test_training.py). One question per evaluation batch:
# one process and two (torchrun) then generate from identical inputs, without padding that differs.
LORA = ["--use_lora", "--lora_r", "32", "--lora_alpha", "64", "--lora_dropout", "0", "--learning_rate", "5e-3",
        "--batch_size", "4", "--system_prompt", "none"]
MEMORISE = LORA + ["--max_steps", "60", "--eval_steps", "5", "--save_steps", "10", "--logging_steps", "5",
                   "--eval_generate", "--eval_generate_samples", "3", "--max_new_tokens", "24",
                   "--per_device_eval_batch_size", "1", "--metric_for_best_model", "eval_count_count_exact",
                   "--early_stopping_patience", "2", "--disable_tqdm"]
NOT_SCORES = ("step", "epoch", "eval_generate_seconds")


def scores(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in NOT_SCORES}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_llava_dataset(tmp_path_factory.mktemp("toy"))


def run_args(toy, tiny_models, out, val=None, train=None) -> list[str]:
    json_path, image_dir, _ = toy
    return ["--train_data", str(train or json_path), "--val_data", str(val or json_path), "--image_dir",
            str(image_dir), "--output_dir", str(out), "--base_model", str(tiny_models["llava"])]


@pytest.fixture(scope="module")
def memorised(toy, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("memorise") / "model"
    assert main(run_args(toy, tiny_models, out) + MEMORISE + ["--report_to", "tensorboard"]) == 0
    return out


def test_the_sample_is_stratified_seeded_and_in_file_order():
    questions = [{"id": f"r{i}", "turn": 0, "type": t} for i, t in enumerate(["count"] * 30 + ["grounding"] * 5
                                                                             + ["exists"] * 12 + [None] * 3)]
    picked = draw_samples(questions, 20, seed=7)
    kinds = [q["type"] for q in picked]
    # water-filling: the 3 untyped and the 5 grounding questions all, the other 12 shared out equally
    assert (kinds.count(None), kinds.count("grounding"), kinds.count("exists"), kinds.count("count")) == (3, 5, 6, 6)
    assert picked == sorted(picked, key=questions.index)
    assert draw_samples(questions, 20, seed=7) == picked and draw_samples(questions, 20, seed=8) != picked
    assert draw_samples(questions, 100, seed=7) == questions


def test_metric_names_follow_the_scorer():
    preds = [{"answer": "There are 2 cans.", "reference": "There are 3 cans.", "type": "count"},
             {"answer": "no box here", "reference": "[0.10, 0.10, 0.50, 0.50]", "type": "grounding"},
             {"answer": "[0.10, 0.10, 0.50, 0.50]", "reference": "[0.10, 0.10, 0.50, 0.50]", "type": "grounding"}]
    flat = flatten(score_predictions(preds))
    assert flat["eval_grounding_acc50"] == 0.5 and flat["eval_unparsed_boxes"] == 0.5
    assert flat["eval_count_count_exact"] == 0.0 and flat["eval_count_count_mae"] == 1.0
    assert "eval_count_n" not in flat
    check_metric_for_best_model("eval_grounding_acc50", {"count", "grounding"})
    check_metric_for_best_model("loss", {"count"})
    with pytest.raises(InputError, match="choose eval_loss or one of"):
        check_metric_for_best_model("eval_grounding_acc", {"count", "grounding"})
    with pytest.raises(InputError, match="left out"):   # missing when no answer holds a number
        check_metric_for_best_model("eval_count_count_mae", {"count"})
    with pytest.raises(InputError, match="add --eval_generate"):
        check_metric_for_best_model("eval_grounding_acc50", set())


def test_flags_are_checked_before_any_model_loads(toy, tiny_models, tmp_path, capsys):
    json_path, image_dir, _ = toy
    no_val = ["--train_data", str(json_path), "--image_dir", str(image_dir), "--output_dir", str(tmp_path / "a"),
              "--base_model", str(tiny_models["llava"])]
    assert main(no_val + ["--eval_generate"]) == 2
    assert "--eval_generate needs --val_data" in capsys.readouterr().err
    assert main(run_args(toy, tiny_models, tmp_path / "b") + ["--metric_for_best_model", "eval_grounding_acc50"]) == 2
    assert "add --eval_generate" in capsys.readouterr().err
    assert main(run_args(toy, tiny_models, tmp_path / "c") + ["--eval_generate", "--eval_generate_samples", "0"]) == 2
    assert "--eval_generate_samples must be >= 1" in capsys.readouterr().err


def test_scores_rise_to_one_and_reach_tensorboard_metrics_json_and_the_plot(memorised):
    metrics = json.loads((memorised / "metrics.json").read_text())
    history = metrics["eval_generate"]
    assert [e["step"] for e in history] == [e["step"] for e in metrics["eval_loss"]]
    acc = [e["eval_count_count_exact"] for e in history]
    assert acc[0] < 1.0 and acc[-1] == 1.0
    assert all(e["eval_generate_samples"] == 3 and e["eval_generate_seconds"] > 0 for e in history)
    # early stopping: two evaluations without a better count_exact after its best, then the run ended (exit 0)
    best = acc.index(1.0)
    assert len(acc) == best + 3 and metrics["global_step"] == history[-1]["step"] < 60
    assert metrics["best_metric"] == 1.0 and metrics["best_global_step"] == history[best]["step"]
    sample = json.loads((memorised / SAMPLES_FILE).read_text())["samples"]
    assert len(sample) == 3 and len({s["type"] for s in sample}) == 3
    assert (memorised / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (events,) = list((memorised / "runs").rglob("events.out.tfevents.*"))
    acc_events = EventAccumulator(str(events.parent))
    acc_events.Reload()
    assert "eval/count_count_exact" in acc_events.Tags()["scalars"]
    logged = [(s.step, s.value) for s in acc_events.Scalars("eval/count_count_exact")]
    assert logged == [(e["step"], pytest.approx(e["eval_count_count_exact"])) for e in history]
    assert "eval/generate_seconds" in acc_events.Tags()["scalars"]


def _predict_and_evaluate(model_dir: Path, toy, sample_ids: set, work: Path, batch_size: int) -> dict:
    """predict.py + evaluate.py on ``model_dir`` over the sampled questions (a LLaVA file of their records)."""
    from vlm_inference import evaluate, predict
    json_path, image_dir, records = toy
    data = work / "sampled.json"
    data.write_text(json.dumps([r for r in records if (r["id"], 0) in sample_ids]))
    preds, scored = work / "predictions.jsonl", work / "metrics.json"
    assert predict.main(["--model_path", str(model_dir), "--data", str(data), "--image_dir", str(image_dir),
                         "--output_file", str(preds), "--batch_size", str(batch_size), "--max_new_tokens", "24"]) == 0
    assert evaluate.main(["--predictions", str(preds), "--output_file", str(scored)]) == 0
    return json.loads(scored.read_text())


def test_scores_equal_predict_and_evaluate_on_the_same_checkpoint(memorised, toy, tmp_path):
    metrics = json.loads((memorised / "metrics.json").read_text())
    sample = {(s["id"], s["turn"]) for s in json.loads((memorised / SAMPLES_FILE).read_text())["samples"]}
    history = {e["step"]: e for e in metrics["eval_generate"]}
    # a checkpoint half-way (not every answer right yet, where available) and the final model
    for folder, step in ((memorised / "checkpoint-10", 10), (memorised, metrics["global_step"])):
        work = tmp_path / folder.name
        work.mkdir()
        evaluated = _predict_and_evaluate(folder, toy, sample, work, batch_size=1)
        expected = scores(history[step])
        assert scores(flatten(evaluated) | {"eval_generate_samples": evaluated["overall"]["n"]}) == expected
    # the last evaluation's answers, in predict.py's format, are those predict.py gave the final model
    ours = [json.loads(line) for line in (memorised / PREDICTIONS_FILE).read_text().splitlines()]
    theirs = [json.loads(line) for line in (tmp_path / memorised.name / "predictions.jsonl").read_text().splitlines()]
    assert [(p["id"], p["turn"], p["answer"]) for p in ours] == [(p["id"], p["turn"], p["answer"]) for p in theirs]


def test_a_resumed_run_continues_the_sample_and_the_history(memorised, toy, tiny_models, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(memorised / "checkpoint-10", resumed / "checkpoint-10")
    # Another --eval_generate_samples: the checkpoint's sample is asked all the same.
    argv = run_args(toy, tiny_models, resumed) + MEMORISE + ["--resume_from_checkpoint", "latest"]
    argv[argv.index("--eval_generate_samples") + 1] = "2"
    assert main(argv) == 0
    a = json.loads((memorised / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert b["resumed_from"].endswith("checkpoint-10")
    assert [scores(e) for e in b["eval_generate"]] == [scores(e) for e in a["eval_generate"]]
    assert (b["global_step"], b["best_global_step"]) == (a["global_step"], a["best_global_step"])
    assert json.loads((resumed / SAMPLES_FILE).read_text())["samples"] == \
        json.loads((memorised / SAMPLES_FILE).read_text())["samples"]


def test_load_best_model_at_end_keeps_the_best_generated_score_not_the_lowest_loss(toy, tiny_models, tmp_path):
    # Training teaches the opposite answer to the validation's "exists" question: as the model grows sure of it,
    # the eval loss rises again while the count is long right, so the two criteria choose different checkpoints.
    json_path, _, records = toy
    flipped = [dict(r) for r in records]
    flipped[2] = {**records[2], "conversations": [records[2]["conversations"][0],
                                                  {"from": "gpt", "value": "No, there is no glass."}]}
    train = tmp_path / "flipped.json"
    train.write_text(json.dumps(flipped))
    out = tmp_path / "best"
    argv = run_args(toy, tiny_models, out, train=train) + LORA + [
        "--max_steps", "40", "--eval_steps", "5", "--save_steps", "5", "--logging_steps", "5", "--disable_tqdm",
        "--eval_generate", "--max_new_tokens", "24", "--metric_for_best_model", "eval_count_count_exact",
        "--greater_is_better", "true", "--load_best_model_at_end", "--save_total_limit", "2"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    exact = [(e["step"], e["eval_count_count_exact"]) for e in metrics["eval_generate"]]
    losses = [(e["step"], e["loss"]) for e in metrics["eval_loss"]]
    best_step = next(s for s, v in exact if v == max(v for _, v in exact))   # the first evaluation at the top
    lowest_loss_step = min(losses, key=lambda sl: sl[1])[0]
    assert best_step != lowest_loss_step, (exact, losses)
    assert metrics["best_global_step"] == best_step and metrics["loaded_best_model"]
    assert metrics["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    saved, best = load_file(out / "adapter_model.safetensors"), load_file(
        out / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    assert saved.keys() == best.keys() and all((saved[k] == best[k]).all() for k in saved)


def test_torchrun_two_processes_log_the_same_scores_as_one(memorised, toy, tiny_models, tmp_path):
    out = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    argv = run_args(toy, tiny_models, out) + MEMORISE
    argv[argv.index("--batch_size") + 1] = "2"   # the same global batch of 4
    done = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2",
                           "--master_port", str(29700 + os.getpid() % 200),
                           str(REPO / "vlm_training" / "train_vlm.py"), *argv],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((memorised / "metrics.json").read_text())
    two = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "train_args.json").read_text())["world_size"] == 2
    assert [scores(e) for e in two["eval_generate"]] == [scores(e) for e in one["eval_generate"]]
    assert (out / PREDICTIONS_FILE).is_file()


@pytest.mark.parametrize("name", ["qwen2_vl", "llava_onevision"])
def test_other_families_answer_in_training_as_predict_answers(name, tiny_models, tmp_path):
    """Their chat template lays the question out and their frame writes the boxes (Qwen2-VL keeps its box tokens
    in the decoded answer); a full fine-tune saves the very weights that answered, so the answers are equal."""
    from test_family_roundtrip import family_records

    from fixtures.toy_data import write_toy_images
    from vlm_core import families
    from vlm_inference import predict
    images = write_toy_images(tmp_path / "images")
    data = tmp_path / "data.json"
    records = family_records(families.frame_for(tiny_models[name]))
    data.write_text(json.dumps(records))
    out = tmp_path / "model"
    assert main(["--train_data", str(data), "--val_data", str(data), "--image_dir", str(images), "--output_dir",
                 str(out), "--base_model", str(tiny_models[name]), "--learning_rate", "1e-2", "--max_steps", "2",
                 "--batch_size", "5", "--save_steps", "0", "--eval_generate", "--max_new_tokens", "16",
                 "--disable_tqdm"]) == 0
    generated = json.loads((out / "metrics.json").read_text())["eval_generate"]
    assert generated and generated[-1]["eval_generate_samples"] == len(records)
    preds = tmp_path / "predictions.jsonl"
    assert predict.main(["--model_path", str(out), "--data", str(data), "--image_dir", str(images), "--output_file",
                         str(preds), "--batch_size", "5", "--max_new_tokens", "16"]) == 0
    ours = [json.loads(line)["answer"] for line in (out / PREDICTIONS_FILE).read_text().splitlines()]
    assert ours == [json.loads(line)["answer"] for line in preds.read_text().splitlines()]
