"""AdamW groups (no decay on biases and norms, frozen parameters left out) and the warm-up + cosine schedule."""
from __future__ import annotations

import math

import pytest
import torch
from train_parts import OnlineAndTarget

from jala_ds.train.config import TrainConfig
from jala_ds.train.optim import build_scheduler, follow_recipe_schedule, optimizer_param_groups, warmup_cosine


def test_warmup_is_linear_then_cosine_falls_to_the_floor():
    schedule = warmup_cosine(total_steps=100, warmup_frac=0.1, min_ratio=0.1)
    assert [schedule(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(100) == pytest.approx(0.1)
    after = [schedule(s) for s in range(10, 100)]
    assert all(a > b for a, b in zip(after, after[1:])) and after[-1] > 0.1


def test_no_warmup_starts_at_the_peak():
    schedule = warmup_cosine(total_steps=10, warmup_frac=0.0, min_ratio=0.0)
    assert schedule(0) == 1.0 and 0.0 < schedule(9) < 0.05


def test_the_scheduler_drives_adamw_step_by_step():
    model = OnlineAndTarget()
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, 0.05), lr=2e-3)
    train = TrainConfig(lr=2e-3, warmup_frac=0.2, min_lr_ratio=0.0)
    scheduler = build_scheduler(optimizer, train, total_steps=10)
    reference = warmup_cosine(10, 0.2, 0.0)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([2e-3 * reference(s) for s in range(10)])
    # only the step count is state: a resumed run follows its recipe's schedule (and stays weights_only-safe)
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [None, None] and state["last_epoch"] == 10


def test_groups_decay_matrices_only_and_leave_frozen_parameters_out():
    model = OnlineAndTarget()
    decay, no_decay = optimizer_param_groups(model, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decay["params"]) == ["head.weight", "online.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["head.bias", "norm.bias", "norm.weight",
                                                                "online.bias"]


def test_a_resumed_run_follows_its_recipe_schedule_from_the_next_step():
    model = OnlineAndTarget()
    first = torch.optim.AdamW(optimizer_param_groups(model, 0.05), lr=1e-3)
    scheduler = build_scheduler(first, TrainConfig(lr=1e-3, warmup_frac=0.0), total_steps=4)
    for _ in range(4):
        first.step()
        scheduler.step()
    saved_optimizer, saved_scheduler = first.state_dict(), scheduler.state_dict()

    longer = TrainConfig(lr=2e-3, warmup_frac=0.0)
    resumed = torch.optim.AdamW(optimizer_param_groups(model, 0.05), lr=longer.lr)
    resumed_scheduler = build_scheduler(resumed, longer, total_steps=8)
    resumed.load_state_dict(saved_optimizer)
    resumed_scheduler.load_state_dict(saved_scheduler)
    assert resumed.param_groups[0]["lr"] == pytest.approx(0.0)  # what the checkpoint alone would give
    follow_recipe_schedule(resumed_scheduler, longer.lr)
    expected = 2e-3 * warmup_cosine(8, 0.0, 0.0)(4)
    assert [g["lr"] for g in resumed.param_groups] == pytest.approx([expected, expected])
    resumed.step()
    resumed_scheduler.step()
    assert resumed.param_groups[0]["lr"] == pytest.approx(2e-3 * warmup_cosine(8, 0.0, 0.0)(5))
