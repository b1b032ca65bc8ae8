"""The training loop every world trainer shares: capped by steps and by wall-clock time.

``world/train_rtdetr.py``, ``world/train_blip.py``, ``world/pretrain_vision.py`` and ``world/pretrain_lm.py``
each keep their own data, model and loss, and hand them to :func:`train_for`, which runs the steps (forward,
backward, optional gradient clipping, optimizer step), sets the learning rate from a schedule, stops at the
step cap or when the time is spent, and returns the loss history; the two pretrainings write their models
with :func:`write_folder` and :func:`write_llava` (a temporary folder renamed into place). ``world/train_yolo.py`` trains through
Ultralytics' own loop and shares :func:`steps_that_fit`, the re-plan to what fits in the time.

A world model is trained for minutes on a CPU, so the time, not the step count, usually ends a run.
A short run learns most while its learning rate decays: a schedule planned over more steps than fit
would stop at a high rate. So the schedule is re-planned, every ``replan_every`` steps, over the steps
that the remaining time allows (measured on the steps done), never past the step cap. With the time
out of reach the cap alone ends a run, and a seeded run is then the same on any machine.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlm_core.io_utils import write_json_atomic

_END = object()  # what next() returns when the batches run out (a batch may be anything, None too)

def steps_that_fit(done: int, seconds_done: float, seconds_left: float, cap: int) -> int:
    """How many steps (or epochs) a run can take in all: ``done`` took ``seconds_done``, ``seconds_left``
    remain (none when negative), never more than ``cap``."""
    return min(cap, done + int(max(0.0, seconds_left) / (seconds_done / done)))


def warmup_cosine(warmup: int, floor: float = 0.02) -> Callable[[int, int], float]:
    """Learning-rate scale at step ``step`` (0-based) of ``planned``: linear warm-up over ``warmup`` steps,
    then a cosine down to ``floor`` at the planned last step (and ``floor`` after it)."""
    def scale(step: int, planned: int) -> float:
        value = (step + 1) / warmup if step < warmup else \
            0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, planned - warmup))))
        return max(value, floor)
    return scale


def shuffled_batches(n: int, batch_size: int, epochs: int, rng: np.random.Generator,
                     drop_last: bool = True) -> Iterator[np.ndarray]:
    """Indices of ``epochs`` passes over ``n`` items, each pass in a new order drawn from ``rng`` when it
    starts. ``drop_last``: passes of ``n // batch_size`` full batches (one smaller one when ``n`` is
    below ``batch_size``), else the last batch of a pass takes what is left."""
    for _ in range(epochs):
        order = rng.permutation(n)
        for b in range(epoch_steps(n, batch_size, drop_last)):
            yield order[b * batch_size:(b + 1) * batch_size]


def epoch_steps(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Steps in one pass of :func:`shuffled_batches`."""
    return max(1, n // batch_size if drop_last else math.ceil(n / batch_size))


@dataclass
class TrainResult:
    steps: int  # optimizer steps taken
    seconds: float  # since the run's start (the ``start`` given to train_for)
    planned: int  # the last plan: the step cap, or fewer when the time did not allow them
    last_loss: float  # the loss of the last step (nan when no step ran)
    # every ``log_every`` steps: {"step", "loss" (mean over those steps), "seconds", "epoch" with an epoch size}
    history: list[dict] = field(default_factory=list)


def train_for(model, loss_fn: Callable, batches: Iterable, optimizer, *, minutes: float, max_steps: int,
              start: float | None = None, schedule: Callable[[int, int], float] | None = None,
              replan_every: int = 0, max_grad_norm: float | None = None, log_every: int = 20,
              epoch_size: int | None = None, name: str = "train") -> TrainResult:
    """Train ``model`` on ``loss_fn(batch)`` for each of ``batches`` until ``max_steps`` steps, the
    batches or ``minutes`` (counted from ``start``, a ``time.perf_counter()`` value; default now) run out.
    The time is checked after each step: a run takes one step at least, and ends at the first step
    that finishes past the time.

    ``schedule(step, planned)`` scales every parameter group's learning rate as the optimizer was built
    (none: constant); ``replan_every`` > 0 re-plans it to the steps the time allows (:func:`steps_that_fit`).
    ``max_grad_norm`` clips the gradient norm of ``model.parameters()``. Every ``log_every`` steps the mean
    loss goes into the history and a line is printed (``epoch_size``: steps per epoch, to name the epoch).
    The model is in training mode for the loop and in eval mode after it.
    """
    import torch

    start = time.perf_counter() if start is None else start
    budget = minutes * 60.0
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    params = list(model.parameters()) if max_grad_norm is not None else []
    history: list[dict] = []
    running: list[float] = []
    step, planned, last_loss = 0, max_steps, math.nan
    model.train()
    t_loop = time.perf_counter()
    batch_iter = iter(batches)
    while step < planned:
        if step and time.perf_counter() - start > budget:  # the first step is always taken
            break
        batch = next(batch_iter, _END)
        if batch is _END:
            break
        if replan_every and step and step % replan_every == 0:
            now = time.perf_counter()
            planned = steps_that_fit(step, now - t_loop, budget - (now - start), max_steps)
        if schedule is not None:
            scale = schedule(step, planned)
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * scale
        loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        last_loss = float(loss.detach())
        running.append(last_loss)
        step += 1
        if step % log_every == 0:
            entry = {"step": step, "loss": float(np.mean(running)), "seconds": time.perf_counter() - start}
            where = ""
            if epoch_size is not None:
                entry["epoch"] = (step - 1) // epoch_size  # the epoch of the step just taken
                where = f" epoch {entry['epoch']}"
            history.append(entry)
            print(f"{name} step {step}/{planned}{where} loss {entry['loss']:.3f} ({entry['seconds']:.0f}s)", flush=True)
            running = []
    model.eval()
    return TrainResult(steps=step, seconds=time.perf_counter() - start, planned=planned, last_loss=last_loss,
                       history=history)


def write_folder(out: Path, write, info: dict) -> None:
    """``write(tmp)`` a model into a temporary folder beside ``out``, add ``pretrain_info.json``, then rename it onto
    ``out``: a killed run leaves no half model there."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    write_json_atomic(tmp / "pretrain_info.json", info)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def write_llava(out: Path, base: Path, model, info: dict) -> None:
    """:func:`write_folder` of the LLaVA ``model`` pretrained from ``base``: the base's files (its processor)
    with the model's weights."""
    def write(tmp: Path) -> None:
        shutil.copytree(base, tmp)
        model.save_pretrained(tmp)

    write_folder(out, write, info)
