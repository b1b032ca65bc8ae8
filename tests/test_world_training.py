"""world/training.py: the loop the world trainers share (step cap, time cap, schedule, clipping, history)."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from world.training import epoch_steps, shuffled_batches, steps_that_fit, train_for, warmup_cosine


def _regression(seed: int = 0):
    """A linear model, a fixed batch of y = 3x, its squared error, and an SGD optimizer."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 16).unsqueeze(1)
    y = 3 * x

    def loss_of(_batch):
        return torch.nn.functional.mse_loss(model(x), y)

    return model, loss_of, torch.optim.SGD(model.parameters(), lr=0.1)


def _endless():
    while True:
        yield None


def test_the_step_cap_ends_a_run_and_the_history_holds_mean_losses(capsys):
    model, loss_of, optimizer = _regression()
    losses = []

    def recorded(batch):
        loss = loss_of(batch)
        losses.append(float(loss.detach()))
        return loss

    run = train_for(model, recorded, _endless(), optimizer, minutes=60, max_steps=7, log_every=3, epoch_size=2,
                    name="toy")
    assert run.steps == run.planned == len(losses) == 7
    assert [h["step"] for h in run.history] == [3, 6] and [h["epoch"] for h in run.history] == [1, 2]
    assert run.history[0]["loss"] == pytest.approx(np.mean(losses[:3]))
    assert run.history[1]["loss"] == pytest.approx(np.mean(losses[3:6]))
    assert run.last_loss == pytest.approx(losses[-1]) and losses[-1] < losses[0] / 2  # it learns
    assert all(0 <= h["seconds"] <= run.seconds for h in run.history)
    assert not model.training  # eval mode after the loop
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" loss ")[0] for line in out] == ["toy step 3/7 epoch 1", "toy step 6/7 epoch 2"]


def test_a_run_ends_with_its_batches():
    model, loss_of, optimizer = _regression()
    run = train_for(model, loss_of, shuffled_batches(10, 4, 2, np.random.default_rng(0)), optimizer, minutes=60,
                    max_steps=100, log_every=100)
    assert run.steps == 4 and run.history == []


def test_the_time_cap_ends_a_run_after_the_step_that_passes_it():
    model, loss_of, optimizer = _regression()

    def slow(batch):
        time.sleep(0.05)
        return loss_of(batch)

    t0 = time.perf_counter()
    run = train_for(model, slow, _endless(), optimizer, minutes=0.1 / 60, max_steps=1000, start=t0)
    # 0.1 s allow at most 2 steps of 0.05 s before the cap, and the one that finishes past it
    assert 1 <= run.steps <= 3 and run.steps < run.planned
    assert 0.1 <= run.seconds <= time.perf_counter() - t0  # counted from start
    # a budget spent before the loop (loading counts when start is earlier): one step, never none
    late = train_for(model, loss_of, _endless(), optimizer, minutes=1, max_steps=1000,
                     start=time.perf_counter() - 3600)
    assert late.steps == 1 and math.isfinite(late.last_loss)


def test_the_schedule_sets_every_group_and_is_replanned_to_the_time():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    model = torch.nn.Sequential(a, b)
    optimizer = torch.optim.SGD([{"params": a.parameters(), "lr": 0.1}, {"params": b.parameters(), "lr": 0.01}])
    seen = []

    def schedule(step, planned):
        seen.append((step, planned))
        return 0.5

    x = torch.ones(4, 1)
    run = train_for(model, lambda _: model(x).pow(2).mean(), _endless(), optimizer, minutes=60, max_steps=5,
                    schedule=schedule)
    assert seen == [(s, 5) for s in range(5)] and run.steps == 5
    assert [g["lr"] for g in optimizer.param_groups] == [0.05, 0.005]  # scaled from each group's own rate

    def slow(_):
        time.sleep(0.02)
        return model(x).pow(2).mean()

    seen.clear()
    run = train_for(model, slow, _endless(), optimizer, minutes=0.3 / 60, max_steps=10_000, schedule=schedule,
                    replan_every=2)
    # at 0.02 s a step, 0.3 s hold about 15: the plan comes down from 10 000 to what the time allows
    assert run.planned < 100 and seen[-1][1] == run.planned and seen[0][1] == 10_000


def test_gradient_clipping_bounds_the_step():
    model, loss_of, _ = _regression()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_for(model, loss_of, _endless(), optimizer, minutes=60, max_steps=1, max_grad_norm=0.01)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - before).norm()) == pytest.approx(0.01, rel=1e-3)  # lr 1 x a gradient clipped to 0.01


def test_warmup_cosine_steps_that_fit_and_batches():
    scale = warmup_cosine(10, floor=0.02)
    assert scale(0, 110) == pytest.approx(0.1) and scale(9, 110) == pytest.approx(1.0)
    assert scale(10, 110) == pytest.approx(1.0) and scale(60, 110) == pytest.approx(0.5)
    assert scale(109, 110) == pytest.approx(0.02, abs=1e-3) and scale(500, 110) == 0.02
    assert warmup_cosine(0)(0, 10) == 1.0  # no warm-up: the cosine from the first step

    assert steps_that_fit(10, 5.0, 10.0, cap=100) == 30 and steps_that_fit(10, 5.0, 10.0, cap=20) == 20
    assert steps_that_fit(10, 5.0, -3.0, cap=100) == 10  # the time is spent: no step more

    rng = np.random.default_rng(0)
    kept = list(shuffled_batches(10, 4, 2, rng))
    assert [len(b) for b in kept] == [4, 4, 4, 4] and epoch_steps(10, 4) == 2
    every = list(shuffled_batches(10, 4, 2, np.random.default_rng(0), drop_last=False))
    assert [len(b) for b in every] == [4, 4, 2, 4, 4, 2] and epoch_steps(10, 4, drop_last=False) == 3
    assert sorted(np.concatenate(every[:3])) == list(range(10))  # each pass a permutation
    assert not np.array_equal(np.concatenate(every[:3]), np.concatenate(every[3:]))  # in a new order
    assert [len(b) for b in shuffled_batches(3, 8, 1, rng)] == [3] and epoch_steps(3, 8) == 1
