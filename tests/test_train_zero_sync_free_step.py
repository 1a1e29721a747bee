"""The sync-free ZeRO-1/2 step (``jala_ds/train/zero_sync_free_step.py``) against DeepSpeed's, on real bf16
engines with torch's fused AdamW: the same weights and Adam state after every step, a NaN step skipped on the
device, and a step that reads nothing from the device."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from deepspeed.accelerator import get_accelerator
from host_syncs import HostSyncCensus
from train_parts import OnlineAndTarget, ds_config_for, gathered_state, world_of_one
from two_ranks import run_two_ranks

from jala_ds.train.config import TrainConfig
from jala_ds.train.engine import build_engine
from jala_ds.train.metrics import StepMetrics
from jala_ds.train.zero_sync_free_step import skipped_flag

same = functools.partial(torch.testing.assert_close, rtol=0, atol=0)


def engine_for(tmp_path, stage: int, sync_free: bool, *, fused: bool = True, dtype: str = "bf16",
               world_size: int = 1, **overrides):
    """A seeded ``OnlineAndTarget`` engine at a constant learning rate (a skipped step advances ours'
    schedule, not DeepSpeed's); ``overrides`` go into the effective DeepSpeed config."""
    torch.manual_seed(0)
    train = TrainConfig(micro_batch_size=2, global_batch_size=2 * world_size, dtype=dtype, sync_free_step=sync_free,
                        warmup_frac=0.0, min_lr_ratio=1.0)
    ds_config = ds_config_for(tmp_path, stage, dtype, world_size=world_size)
    ds_config["optimizer"]["params"]["fused"] = fused
    ds_config.update(overrides)
    if world_size > 1:
        return build_engine(OnlineAndTarget(), ds_config, train, total_steps=8)
    with world_of_one():
        return build_engine(OnlineAndTarget(), ds_config, train, total_steps=8)


def step(engine, x: torch.Tensor) -> None:
    engine.backward(engine(x.to(engine.device, torch.bfloat16)))
    engine.step()


def adam_state(engine) -> list[torch.Tensor]:
    """This rank's fp32 master partitions, moments and step counts."""
    inner = engine.optimizer.optimizer
    return [tensor.clone() for group in inner.param_groups for param in group["params"]
            for tensor in (param, *inner.state[param].values())]


def batches_with_a_nan_at(nan_step: int, count: int = 4) -> list[torch.Tensor]:
    torch.manual_seed(1)
    batches = [torch.randn(2, 8) for _ in range(count)]
    batches[nan_step][0, 0] = float("nan")   # a NaN loss: every gradient NaN, the step must be skipped
    return batches


@pytest.mark.parametrize("stage", [1, 2])
def test_training_lands_on_deepspeeds_weights_and_adam_state_and_skips_the_same_step(tmp_path, stage):
    stock = engine_for(tmp_path, stage, sync_free=False)
    ours = engine_for(tmp_path, stage, sync_free=True)
    assert ours.optimizer.sync_free_step and not getattr(stock.optimizer, "sync_free_step", False)
    for i, x in enumerate(batches_with_a_nan_at(2)):
        before = adam_state(ours)
        step(stock, x)
        step(ours, x)
        assert stock.optimizer.overflow is (i == 2)
        assert ours.lr_scheduler.last_epoch == stock.lr_scheduler.last_epoch + (i >= 2)   # ours counts the skip
        assert float(skipped_flag(ours)) == float(skipped_flag(stock)) == (1.0 if i == 2 else 0.0)
        if i == 2:
            same(adam_state(ours), before)      # weights, moments and the step count untouched
        same(adam_state(ours), adam_state(stock))
        same(gathered_state(ours.module), gathered_state(stock.module))
        norm = float(stock.get_global_grad_norm())
        assert float(ours.get_global_grad_norm()) == norm
        assert norm > TrainConfig().grad_clip or norm == float("inf")   # every step taken is clipped


def test_the_log_counts_the_skipped_steps(tmp_path):
    engine = engine_for(tmp_path, 2, sync_free=True)
    metrics = StepMetrics(engine.device, losses=(), flops_per_sample=None, peak_flops=None)
    for x in batches_with_a_nan_at(1, count=3):
        step(engine, x)
        metrics.add_step(skipped_flag(engine))
    with world_of_one():
        assert metrics.flush(lr=1e-4, grad_norm=None)["skipped_steps"] == 1.0
        assert metrics.flush(lr=1e-4, grad_norm=None)["skipped_steps"] == 0.0   # per log window


def test_a_training_step_never_waits_for_the_device(tmp_path, monkeypatch):
    """Forward, backward and step of a ZeRO-2 bf16 engine built as the recipe builds it (multi-tensor checks,
    bucketed reduction, sync-free step): no operator that reads a value to the host, and never the accelerator's
    ``synchronize()``. DeepSpeed's step reads its overflow verdict and the norm's validity on the host; its
    throughput timer, which the effective config turns off, synchronises at each forward and each step from the
    third step on."""
    accelerator = get_accelerator()
    variants = {"recipe": {}, "deepspeed's step": {"sync_free": False},
                "deepspeed's timer": {"timers": {"throughput": {"enabled": True}}}}
    waits = {}
    for name, settings in variants.items():
        (tmp_path / name).mkdir()
        engine = engine_for(tmp_path / name, 2, **{"sync_free": True, **settings})
        for x in torch.randn(2, 2, 8):    # the timer starts synchronising at the third step
            step(engine, x)
        synchronised = []
        device_wide = accelerator.synchronize
        monkeypatch.setattr(accelerator, "synchronize",
                            lambda *args, **kwargs: synchronised.append(1) or device_wide(*args, **kwargs))
        with HostSyncCensus() as census:
            for x in torch.randn(2, 2, 8):
                step(engine, x)
        monkeypatch.undo()
        waits[name] = (len(synchronised), sum(census.calls.values()))
    assert waits["recipe"] == (0, 0)
    assert waits["deepspeed's step"] == (0, 2 * 4), "the verdict, the norm's validity, once more per group (2)"
    assert waits["deepspeed's timer"] == (4, 0), "DeepSpeed's timer: once per forward, once per step"


@pytest.mark.parametrize("case", ["not fused", "fp32", "no clipping", "overflow check off"])
def test_steps_it_cannot_take_on_the_device_keep_deepspeeds(tmp_path, case):
    overrides = {"gradient_clipping": 0.0} if case == "no clipping" else {}
    if case == "overflow check off":
        overrides["bf16"] = {"enabled": True, "check_grad_overflow": False}
    engine = engine_for(tmp_path, 2, sync_free=True, fused=case != "not fused",
                        dtype="fp32" if case == "fp32" else "bf16", **overrides)
    assert not getattr(engine.optimizer, "sync_free_step", False)
    assert "unscale_and_clip_grads" not in vars(engine.optimizer)


def test_zero3_keeps_its_own_step(tmp_path):
    engine = engine_for(tmp_path, 3, sync_free=True)
    assert not getattr(engine.optimizer, "sync_free_step", False)
    with world_of_one():   # ZeRO-3's gathers read the rank variables
        step(engine, torch.randn(2, 8))
    assert float(skipped_flag(engine)) == 0.0   # DeepSpeed's own verdict


TWO_RANKS = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch, torch.distributed as dist
from jala_ds.train.engine import init_distributed
from jala_ds.train.zero_sync_free_step import skipped_flag
from test_train_zero_sync_free_step import batches_with_a_nan_at, engine_for, step
from train_parts import gathered_state

init_distributed()
rank, out = dist.get_rank(), Path(sys.argv[2])
engines = {name: engine_for(out / f"{name}{rank}", 2, sync_free=name == "ours", world_size=2)
           for name in ("stock", "ours")}
skipped = {name: [] for name in engines}
for i, x in enumerate(batches_with_a_nan_at(1, count=3)):
    if rank == 0:                      # the NaN on rank 1 only: both ranks must skip
        x = x.nan_to_num(0.0)
    for name, engine in engines.items():
        step(engine, x + rank)
        skipped[name].append(float(skipped_flag(engine)))
states = {name: gathered_state(engine.module) for name, engine in engines.items()}
(out / f"rank{rank}.json").write_text(json.dumps({
    "skipped": skipped,
    "same_weights": all(torch.equal(states["ours"][key], states["stock"][key]) for key in states["stock"]),
    "weights": {key: value.sum().item() for key, value in states["ours"].items()}}))
"""


@pytest.mark.slow
def test_two_ranks_skip_together_and_land_on_deepspeeds_weights(tmp_path):
    """A NaN in one rank's batch poisons the norm all-reduced to both: both skip, on the device."""
    for rank in range(2):
        for name in ("stock", "ours"):
            (tmp_path / f"{name}{rank}").mkdir()
    results = run_two_ranks(TWO_RANKS, [str(Path(__file__).parent)], tmp_path)
    assert results[0] == results[1]
    assert results[0]["skipped"] == {"stock": [0.0, 1.0, 0.0], "ours": [0.0, 1.0, 0.0]}
    assert results[0]["same_weights"]
