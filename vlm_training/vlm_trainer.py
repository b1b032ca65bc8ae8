"""The Trainer of stage 4, its callbacks and run metrics, and what makes a training run resumable after any
interruption.

- :class:`VLMTrainer`: transformers' Trainer with length grouping from precomputed lengths, own learning
  rates for the projector and the vision tower, token counts for the padding fraction, and (``--eval_generate``)
  generated answers scored per question type at every evaluation (:mod:`vlm_training.generation_eval`).
- :class:`StopOnSignal`: Ctrl-C or SIGTERM finishes the step, saves a checkpoint there and stops.
- :class:`RunTotals`: seconds, examples and tokens of the whole run, carried in every checkpoint.
- :func:`resolve_checkpoint`: the checkpoint a run continues from: the newest *intact* one
  (:func:`checkpoint_problem`: complete, and every file as its manifest says), of an interrupted run of the
  same settings; a damaged newest checkpoint is reported and the one before it is used.
- :class:`SaveFrame`, :class:`SaveSamples`, :class:`SealCheckpoint`, :func:`count_parameters`,
  :func:`collect_metrics`, :func:`plot_loss`: what every checkpoint (its box frame, the generation sample, then a
  checksum manifest written last) and the final metrics.json / loss.png hold; :func:`plot_skill_curves` draws
  the per-type learning curves alone (from a metrics.json, for reports).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from vlm_core import families
from vlm_core.io_utils import InputError, write_json_atomic
from vlm_core.model_dir import ADAPTER_WEIGHT_FILES, MODEL_CONFIG_FILE, MODEL_WEIGHT_FILES, TRAIN_ARGS_FILE
from vlm_core.runtime import Terminated, plural

# Settings a checkpoint must share with the run that resumes it (else its weights do not fit).
RESUME_KEYS = ("base_model", "use_lora", "lora_r", "lora_alpha", "train_projector", "train_vision_tower",
               "box_prompt")


MANIFEST_FILE = "checkpoint_manifest.json"   # sha256 of every file of a checkpoint, written last


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(folder: Path) -> Path:
    """Seal a saved checkpoint: the size and sha256 of each of its files, written atomically after them."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in checkpoint_files(folder)}
    write_json_atomic(folder / MANIFEST_FILE, {"files": files})
    return folder / MANIFEST_FILE


def checkpoint_problem(path: Path) -> str | None:
    """Why the Trainer cannot resume from ``path`` (None: it can).

    The Trainer writes trainer_state.json last, so a kill -9 during a save (or during rotation's delete)
    leaves a folder without it, or without the weights. A sealed checkpoint (:class:`SealCheckpoint`) must
    also match its manifest file by file: a truncated optimizer.pt, a flipped bit in the adapter or a
    hand-edited trainer_state.json is caught here, not as a traceback (or a silently different run) later.
    Checkpoints written before manifests existed are checked the old way.
    """
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable trainer_state.json (its save was interrupted)"
    if not any((path / n).is_file() for n in ADAPTER_WEIGHT_FILES + MODEL_WEIGHT_FILES):
        return "no weights (its save was interrupted)"
    if (path / "checkpoint-is-incomplete.txt").exists():
        return "marked incomplete by the Trainer"
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"{MANIFEST_FILE} is unreadable"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST_FILE} lists no files"
    for name, entry in sorted(files.items()):
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if not isinstance(entry, dict) or f.stat().st_size != entry.get("size"):
            return f"{name} has another size than when it was saved (truncated?)"
        if _sha256(f) != entry.get("sha256"):
            return f"{name} differs from what was saved (checksum)"
    return None


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint the Trainer can resume from (:func:`checkpoint_problem` finds nothing wrong)."""
    return checkpoint_problem(path) is None


def list_checkpoints(out: Path) -> list[Path]:
    """The checkpoint-N folders of ``out``, newest (highest N) first."""
    found = [p for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def read_run_record(out: Path) -> dict | None:
    try:
        record = json.loads((out / TRAIN_ARGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def resolve_checkpoint(requested: str | None, out: Path, settings: dict) -> tuple[str | None, list[Path], str]:
    """The checkpoint this run continues from (None: a fresh start), the checkpoint folders to remove
    before it starts, and a line that says why. Nothing is touched here: the caller removes them once
    its inputs are checked.

    Without ``--resume_from_checkpoint`` an interrupted run (train_args.json says "training") is
    continued, so that running an interrupted command again picks up where it stopped; checkpoints of
    an earlier *finished* run go, or a later interruption would resume from one of them. Incomplete
    checkpoints (a save that was killed) are skipped and go too: the resumed run writes them again.
    """
    record = read_run_record(out)
    if requested is None and (record or {}).get("status") != "training":
        old = list_checkpoints(out) if record is not None else []
        return None, old, f"starting afresh: removing the {plural(len(old), 'checkpoint')} of the earlier finished run" \
            if old else ""
    if requested not in (None, "latest"):
        return requested, [], f"continuing from {requested}"
    found = list_checkpoints(out) if out.is_dir() else []
    problems = {p: checkpoint_problem(p) for p in found}
    complete = [p for p in found if problems[p] is None]
    incomplete = [p for p in found if problems[p] is not None]
    skipped = "".join(f"skipping and removing {p.name}: {problems[p]}; " for p in incomplete)
    if not complete:
        return None, incomplete, f"{skipped}no intact checkpoint in {out}; starting from scratch"
    differ = [k for k in RESUME_KEYS if record and k in record and record[k] != settings[k]]
    if differ:
        raise InputError(f"--output_dir: the checkpoints in {out} were trained with "
                         + ", ".join(f"--{k} {record[k]}" for k in differ)
                         + "; rerun with those flags to continue, or choose another --output_dir")
    return str(complete[0]), incomplete, f"{skipped}continuing from {complete[0]} (the newest intact checkpoint)"


def saved_state(checkpoint: str | None) -> dict | None:
    """The trainer_state.json of a checkpoint (None without one)."""
    if checkpoint is None:
        return None
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


# --------------------------------------------------------------------------- trainer
class RunTotals(TrainerCallback, ExportableState):
    """Seconds, examples and tokens of the whole run. Saved in every checkpoint's trainer_state.json,
    so the metrics of a resumed run cover the sessions before it too."""
    FIELDS = ("seconds", "examples", "tokens", "padding")

    def __init__(self):
        self.seconds, self.examples, self.tokens, self.padding = 0.0, 0, 0, 0
        self._last = time.perf_counter()

    def state(self) -> dict:
        return {"args": {}, "attributes": {k: getattr(self, k) for k in self.FIELDS}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__)  # a resumed state holds the checkpoint's
        for key, value in (saved.get("attributes", {}) if isinstance(saved, dict) else {}).items():
            setattr(self, key, value)
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.seconds, self._last = self.seconds + now - self._last, now


class StopOnSignal(TrainerCallback):
    """Ctrl-C, SIGTERM (preemption) or SIGHUP (the terminal or ssh session went away): finish the current step,
    save a checkpoint there, and stop. A second signal stops at once. SIGHUP is treated like SIGTERM."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.received: int | None = None

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
              "(again to stop at once)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.received is not None
        if args.world_size > 1:  # every process stops at the same step, or the others hang in a collective
            import torch.distributed as dist
            flag = torch.tensor([int(stop)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            control.should_save = control.should_training_stop = True


class VLMTrainer(Trainer):
    """The Trainer with precomputed-length grouping, own learning rates for the projector and the vision
    tower, token counts for the padding fraction, and generation-based metrics in every evaluation."""

    def __init__(self, *a, group_lrs: dict[str, float] | None = None, totals: RunTotals | None = None,
                 generation_eval=None, **kw):
        super().__init__(*a, **kw)
        self.group_lrs = [(part, lr) for part, lr in (group_lrs or {}).items() if lr is not None]
        self.totals = totals or RunTotals()
        self.generation_eval = generation_eval   # a generation_eval.GenerationEvaluator, or None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The eval loss, and the generated answers' scores beside it: one log entry per evaluation, so every
        --report_to backend, the best-model choice and early stopping see them all."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                         ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.generation_eval is not None and metric_key_prefix == "eval":
            from transformers.integrations import is_deepspeed_zero3_enabled
            # Sharded weights are gathered layer by layer in every forward: all ranks generate in lockstep.
            synced = self.args.world_size > 1 and (is_deepspeed_zero3_enabled() or self.is_fsdp_enabled)
            output.metrics.update(self.generation_eval.evaluate(
                self.model, self.args, self.state.global_step, self.accelerator.autocast(), synced_gpus=synced,
                prefix=metric_key_prefix))
        return output

    def _get_train_sampler(self, train_dataset=None):
        from vlm_training.llava_data import SeededLengthGroupedSampler
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            # Lengths are known from tokenization: no image is read to group by length.
            return SeededLengthGroupedSampler(
                dataset.lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                seed=self.args.data_seed)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        return torch.utils.data.SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is not None:
            return self.optimizer
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[int, bool], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                own = next((i + 1 for i, (part, _) in enumerate(self.group_lrs) if part in name), 0)
                groups.setdefault((own, name in decay), []).append(param)
        param_groups = []
        # Language-model groups first: the Trainer logs the learning rate of group 0.
        for (own, has_decay), params in sorted(groups.items()):
            group = {"params": params, "weight_decay": self.args.weight_decay if has_decay else 0.0}
            if own:
                group["lr"] = self.group_lrs[own - 1][1]
            param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Reload a full (non-adapter) checkpoint through ``from_pretrained``, strictly.

        transformers 5 saves LLaVA-family weights under their legacy names (``language_model.model.*``) and its
        Trainer reloads a checkpoint with a non-strict ``load_state_dict``: every key misses, nothing loads, and
        the run silently continues from the base weights. ``from_pretrained`` maps the names; the strict load
        then proves every weight arrived. Adapters, DeepSpeed and FSDP keep the Trainer's own path.
        """
        model = self.model if model is None else model
        folder = Path(resume_from_checkpoint)
        full = (folder / MODEL_CONFIG_FILE).is_file() and any((folder / n).is_file() for n in MODEL_WEIGHT_FILES)
        if not full or self.is_deepspeed_enabled or self.is_fsdp_enabled or hasattr(model, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        saved = type(model).from_pretrained(folder, dtype=dtype).state_dict()
        model.load_state_dict(saved, strict=True)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and "attention_mask" in inputs:
            mask = inputs["attention_mask"]
            self.totals.examples += int(mask.shape[0]) * self.args.world_size
            self.totals.tokens += int(mask.numel())
            self.totals.padding += int(mask.numel() - mask.sum().item())
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


class ResumableEarlyStopping(EarlyStoppingCallback):
    """transformers' EarlyStoppingCallback whose count of evaluations without improvement continues after a
    resume (saved in every checkpoint's trainer_state.json, restored here as :class:`RunTotals` restores its own):
    a resumed run stops where an uninterrupted one does."""

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        saved = state.stateful_callbacks.get(type(self).__name__)
        if isinstance(saved, dict):
            self.early_stopping_patience_counter = saved.get("attributes", {}).get(
                "early_stopping_patience_counter", 0)

    @property
    def stopped(self) -> bool:
        return self.early_stopping_patience_counter >= self.early_stopping_patience


class SaveFrame(TrainerCallback):
    """Every checkpoint carries the box frame too, as the final model does (box_frame.json), and the prompt
    format (prompt_format.json): predict.py on a checkpoint asks as training taught, as --eval_generate asked."""

    def __init__(self, frame: families.BoxFrame, fmt=None):
        self.frame, self.fmt = frame, fmt

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            self.frame.save(folder)
            if self.fmt is not None:
                self.fmt.save(folder)


class SaveSamples(TrainerCallback):
    """Every checkpoint carries the generation sample's question ids (``--eval_generate``): a run resumed from it
    evaluates on the same questions, wherever the checkpoint was copied to."""

    def __init__(self, write):
        self.write = write   # folder -> None

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            self.write(folder)


class SealCheckpoint(TrainerCallback):
    """After every save (and after :class:`SaveFrame`), the checkpoint's manifest is written, last: a checkpoint
    without one, or whose files no longer match it, is never resumed from (:func:`checkpoint_problem`)."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if args.world_size > 1:
            # Every process writes its own RNG state into the checkpoint (the Trainer's rng_state_<rank>.pth, for
            # an exact resume): the manifest is written once all of them are there.
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
        if state.is_world_process_zero and folder.is_dir():
            write_manifest(folder)


def count_parameters(model) -> tuple[int, int]:
    # Under DeepSpeed ZeRO-3 the weights are partitioned and numel() is 0: ds_numel is the real size.
    def size(p):
        return getattr(p, "ds_numel", 0) or p.numel()
    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    total = sum(size(p) for p in model.parameters())
    return trainable, total


# --------------------------------------------------------------------------- run metrics
# What the Trainer itself adds to an evaluation's log entry besides the scores.
_TRAINER_EVAL_KEYS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
GENERATED_MARK = "eval_generate_seconds"   # the log entries of evaluations that generated
# The scores drawn as learning curves, one panel per question type (all in 0..1).
CURVE_SCORES = ("accuracy", "count_exact", "acc50", "mean_iou", "bleu4", "rougeL", "unparsed_boxes")


def collect_metrics(log_history: list[dict]) -> dict:
    train = [{"step": e["step"], "loss": e["loss"], "learning_rate": e.get("learning_rate"),
              "epoch": e.get("epoch")} for e in log_history if "loss" in e and "step" in e]
    evals = [{"step": e["step"], "loss": e["eval_loss"], "epoch": e.get("epoch")}
             for e in log_history if "eval_loss" in e]
    # --eval_generate: every evaluation's generated scores under their logged names (eval_grounding_acc50, ...).
    generated = [{"step": e["step"], "epoch": e.get("epoch"),
                  **{k: v for k, v in e.items() if k.startswith("eval_") and k not in _TRAINER_EVAL_KEYS}}
                 for e in log_history if GENERATED_MARK in e]
    # Each logged loss averages the steps since the one before: weighted, they give the run's mean.
    steps = [0] + [e["step"] for e in train]
    weighted = sum(e["loss"] * (s - prev) for e, s, prev in zip(train, steps[1:], steps))
    return {"train_loss": train, "eval_loss": evals, "eval_generate": generated,
            "train_loss_mean": weighted / steps[-1] if train else None}


def skill_curves(metrics: dict) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{question type: {score: [(step, value), ...]}}`` from metrics.json's ``eval_generate`` history
    (``eval_unparsed_boxes`` goes with the grounding panel)."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for entry in metrics.get("eval_generate") or []:
        for key, value in entry.items():
            if not key.startswith("eval_") or not isinstance(value, (int, float)):
                continue
            name = key[len("eval_"):]
            if name == "unparsed_boxes":
                qtype, score = "grounding", name
            else:
                score = next((s for s in CURVE_SCORES if name.endswith(f"_{s}")), None)
                if score is None:
                    continue
                qtype = name[:-len(score) - 1]
            curves.setdefault(qtype, {}).setdefault(score, []).append((entry["step"], value))
    return curves


def _draw_skills(axes, curves: dict) -> None:
    for ax, (qtype, scores) in zip(axes, sorted(curves.items())):
        for score, points in scores.items():
            ax.plot([s for s, _ in points], [v for _, v in points], label=score,
                    marker="o" if len(points) < 30 else None)
        ax.set_title(qtype)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _grid(panels: int, columns: int = 3):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(columns, panels)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols if panels > 1 else 7, 3.6 * rows if panels > 1 else 4),
                             squeeze=False)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat


def plot_loss(metrics: dict, path: Path) -> None:
    """The losses, and beside them one panel per question type with its generated scores (--eval_generate)."""
    curves = skill_curves(metrics)
    fig, axes = _grid(1 + len(curves))
    ax = axes[0]
    for key, label, big in (("train_loss", "train loss", 50), ("eval_loss", "eval loss", 30)):
        if metrics[key]:
            ax.plot([e["step"] for e in metrics[key]], [e["loss"] for e in metrics[key]], label=label,
                    marker=("." if key == "train_loss" else "o") if len(metrics[key]) < big else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title("LLaVA fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    _draw_skills(axes[1:], curves)
    _save_figure(fig, path)


def plot_skill_curves(metrics: dict | str | os.PathLike, path: str | os.PathLike) -> bool:
    """The learning curve of each question type (steps on x), one panel each, from a metrics.json (or its
    dict) of a run trained with --eval_generate; False (nothing written) when it holds none."""
    if not isinstance(metrics, dict):
        metrics = json.loads(Path(metrics).read_text(encoding="utf-8"))
    curves = skill_curves(metrics)
    if not curves:
        return False
    fig, axes = _grid(len(curves))
    _draw_skills(axes, curves)
    _save_figure(fig, Path(path))
    return True
