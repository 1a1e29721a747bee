"""The multi-tensor gradient checks (``jala_ds/train/zero_grad_checks.py``) against DeepSpeed's own, on real
ZeRO-1/2 bf16 engines: the same overflow verdict and norm for finite, infinite and NaN gradients, and training
that skips the same steps and lands on the same weights."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from train_parts import OnlineAndTarget, ds_config_for, gathered_state, world_of_one
from two_ranks import run_two_ranks

from jala_ds.train.config import TrainConfig
from jala_ds.train.engine import build_engine
from jala_ds.train.zero_grad_checks import squared_norms_sum, use_multi_tensor_grad_checks


def engine_for(tmp_path, stage: int, multi_tensor: bool, seed: int = 0, world_size: int = 1):
    torch.manual_seed(seed)
    train = TrainConfig(micro_batch_size=2, global_batch_size=2 * world_size, dtype="bf16",
                        multi_tensor_grad_checks=multi_tensor)
    ds_config = ds_config_for(tmp_path, stage, "bf16", world_size=world_size)
    if world_size > 1:
        return build_engine(OnlineAndTarget(), ds_config, train, total_steps=8)
    with world_of_one():
        return build_engine(OnlineAndTarget(), ds_config, train, total_steps=8)


def backward(engine, x: torch.Tensor) -> None:
    engine.backward(engine(x.to(torch.bfloat16)))


def test_squared_norms_sum_adds_every_tensor_across_dtypes():
    tensors = [torch.randn(5, 3), torch.randn(7, dtype=torch.bfloat16), torch.randn(2, 2, dtype=torch.float64)]
    expected = sum(float(t.double().square().sum()) for t in tensors)
    total = squared_norms_sum(tensors)
    assert total.shape == (1,) and total.dtype == torch.float32
    assert float(total) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("poison", [None, float("inf"), float("-inf"), float("nan")])
def test_overflow_verdict_and_norm_match_deepspeeds(tmp_path, poison):
    engine = engine_for(tmp_path, stage=2, multi_tensor=False)
    stock = engine.optimizer
    backward(engine, torch.randn(2, 8))
    grads = [grad for group in range(len(stock.bit16_groups)) for grad in stock.averaged_gradients[group]]
    assert {tuple(grad.shape) for grad in grads} >= {(8, 8), (1, 8), (8,), (1,)}   # + ZeRO's alignment padding
    if poison is not None:
        grads[0].view(-1)[1] = poison

    stock_overflow = bool(stock.has_overflow_partitioned_grads_serial())
    stock_norm = float(stock.scaled_global_norm())
    assert use_multi_tensor_grad_checks(stock)
    assert bool(stock.has_overflow_partitioned_grads_serial()) is stock_overflow is (poison is not None)
    norm = float(stock.scaled_global_norm())
    if poison is None:
        expected = sum(float(g.double().square().sum()) for g in grads) ** 0.5
        assert stock_norm == pytest.approx(expected, rel=1e-6)
        assert norm == pytest.approx(stock_norm, rel=1e-6)
    else:
        assert norm == stock_norm == float("inf")   # a group's -1 sentinel, combined: what step() skips on


@pytest.mark.parametrize("stage", [1, 2])
def test_training_skips_the_same_steps_and_ends_on_the_same_weights(tmp_path, stage):
    stock = engine_for(tmp_path, stage=stage, multi_tensor=False)
    fast = engine_for(tmp_path, stage=stage, multi_tensor=True)
    assert isinstance(fast.optimizer.get_grad_norm_direct, functools.partial)
    same_weights = functools.partial(torch.testing.assert_close, rtol=0, atol=0)
    same_weights(gathered_state(fast.module), gathered_state(stock.module))
    torch.manual_seed(1)
    batches = [torch.randn(2, 8) for _ in range(4)]
    batches[2][0, 0] = float("nan")             # a NaN loss: every gradient NaN, the step must be skipped
    for step, x in enumerate(batches):
        before = gathered_state(fast.module)
        for engine in (stock, fast):
            backward(engine, x)
            engine.step()
        assert fast.optimizer.overflow is stock.optimizer.overflow is (step == 2)
        if step == 2:
            same_weights(gathered_state(fast.module), before)
        norm = float(stock.get_global_grad_norm())
        assert float(fast.get_global_grad_norm()) == pytest.approx(norm, rel=1e-5)
        assert norm > TrainConfig().grad_clip      # so every step that is taken is clipped
    same_weights(gathered_state(fast.module), gathered_state(stock.module))


def test_zero3_keeps_its_own_checks(tmp_path):
    engine = engine_for(tmp_path, stage=3, multi_tensor=True)
    assert not isinstance(engine.optimizer.get_grad_norm_direct, functools.partial)


TWO_RANKS = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch, torch.distributed as dist
from jala_ds.train.engine import init_distributed
from jala_ds.train.zero_grad_checks import use_multi_tensor_grad_checks
from test_train_zero_grad_checks import backward, engine_for

init_distributed()
rank, out = dist.get_rank(), Path(sys.argv[2])
(out / f"config{rank}").mkdir()
engine = engine_for(out / f"config{rank}", stage=2, multi_tensor=False, world_size=2)
torch.manual_seed(rank)
backward(engine, torch.randn(2, 8))   # each rank its own batch; ZeRO-2 leaves each rank half of the mean gradient
results = {}
for poisoned in (False, True):
    if poisoned and rank == 1:        # an inf on one rank must stop the step on both
        engine.optimizer.averaged_gradients[0][0].view(-1)[0] = float("inf")
    stock = (bool(engine.optimizer.has_overflow(True)), float(engine.optimizer.scaled_global_norm()))
    use_multi_tensor_grad_checks(engine.optimizer)
    results[str(poisoned)] = {"stock": stock, "ours": (bool(engine.optimizer.has_overflow(True)),
                                                       float(engine.optimizer.scaled_global_norm()))}
    del engine.optimizer.has_overflow_partitioned_grads_serial, engine.optimizer.get_grad_norm_direct
(out / f"rank{rank}.json").write_text(json.dumps(results))
"""


@pytest.mark.slow
def test_two_ranks_reach_the_same_verdict_and_norm_as_deepspeed(tmp_path):
    """Each rank holds half of the gradient partitions: the verdict is all-reduced (an inf on one rank skips the
    step on both) and the squared norms are summed over the ranks, as DeepSpeed does."""
    results = run_two_ranks(TWO_RANKS, [str(Path(__file__).parent)], tmp_path)
    assert results[0] == results[1]
    clean, poisoned = results[0]["False"], results[0]["True"]
    assert clean["stock"][0] is clean["ours"][0] is False
    assert clean["ours"][1] == pytest.approx(clean["stock"][1], rel=1e-6) and clean["stock"][1] > 0
    assert poisoned["stock"][0] is poisoned["ours"][0] is True
