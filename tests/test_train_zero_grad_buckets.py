"""The bucketed ZeRO-2 gradient reduction (``jala_ds/train/zero_grad_buckets.py``) against DeepSpeed's own, on
real engines: training lands on the same weights bit for bit, with one bucket or many, with gradient accumulation,
with parameters that some micro-batches leave without a gradient and with a skipped step, on one rank and on
two; and the backward issues a join and an add per bucket where DeepSpeed copies every gradient twice."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from deepspeed.accelerator import get_accelerator
from host_syncs import HostSyncCensus
from train_parts import gathered_state, world_of_one
from two_ranks import run_two_ranks

from benchmarks.zero2_proxy import OperatorCount
from jala_ds.train.config import TrainConfig
from jala_ds.train.ds_config import PROJECT_ROOT, build_ds_config
from jala_ds.train.engine import build_engine


class OddShapes(torch.nn.Module):
    """Widths that are not multiples of 8, so ZeRO's flat layout pads between parameters, and a branch that
    micro-batches with a negative first value skip, so ``sometimes`` then gets no gradient."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(5, 7)
        self.second = torch.nn.Linear(7, 3)
        self.sometimes = torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.second(torch.tanh(self.first(x)))
        if bool(x[0, 0] > 0):
            y = y + self.sometimes(x)
        return (y - 1).square().mean()


def engine_for(tmp_path: Path, bucketed: bool, *, accum: int = 1, bucket_size: int = 10**6, stage: int = 2,
               aligned: bool = False, world_size: int = 1, model: torch.nn.Module | None = None):
    """A bf16 engine over ``model`` (``OddShapes``); ``aligned``: ZeRO pads each parameter to 16 bytes in its flat
    layout (``parameter_alignment``) and reduces on its own stream (``overlap_comm``, which on a GPU puts the
    bucketed path's reductions on DeepSpeed's reduction stream)."""
    template = json.loads((PROJECT_ROOT / "ds_configs" / "cpu.json").read_text())
    template["zero_optimization"].update(stage=stage, reduce_bucket_size=bucket_size, parameter_alignment=aligned,
                                         overlap_comm=aligned)
    path = tmp_path / f"stage{stage}_{bucket_size}_{aligned}.json"
    path.write_text(json.dumps(template))
    train = TrainConfig(micro_batch_size=2, global_batch_size=2 * accum * world_size, grad_accum_steps=accum,
                        ds_config=str(path), dtype="bf16", grad_clip=1.0, bucketed_grad_reduction=bucketed)
    torch.manual_seed(0)
    with contextlib.nullcontext() if world_size > 1 else world_of_one():
        return build_engine(model or OddShapes(), build_ds_config(train, world_size), train, total_steps=8)


def micro_batches(rank: int, count: int) -> list[torch.Tensor]:
    """Signs of the first value cycle so that ``sometimes`` misses the first, a middle and a last micro-batch of
    some step; batch 5 holds a NaN, so that step is skipped."""
    generator = torch.Generator().manual_seed(rank)
    xs = [torch.randn(2, 5, generator=generator) for _ in range(count)]
    for i, x in enumerate(xs):
        x[0, 0] = 1.0 if i % 4 in (1, 2) else -1.0
    xs[5][1, 2] = float("nan")
    return xs


def train(engine, xs: list[torch.Tensor]) -> list[dict]:
    """Every micro-batch through the engine; after each optimiser step, the weights, the clipping norm and
    whether the step was skipped."""
    record = []
    for i, x in enumerate(xs, start=1):
        engine.backward(engine(x.to(engine.device, torch.bfloat16)))
        engine.step()
        if i % engine.gradient_accumulation_steps() == 0:
            record.append({"weights": gathered_state(engine.module), "skipped": engine.optimizer.overflow,
                           "norm": float(engine.get_global_grad_norm())})
    return record


def assert_same_training(stock: list[dict], bucketed: list[dict]) -> None:
    assert len(stock) == len(bucketed) > 0
    for before, after in zip(stock, bucketed):
        assert after["skipped"] is before["skipped"]
        torch.testing.assert_close(after["weights"], before["weights"], rtol=0, atol=0)
        if not before["skipped"]:
            assert after["norm"] == pytest.approx(before["norm"], rel=1e-6)
    assert any(step["skipped"] for step in stock) and not all(step["skipped"] for step in stock)


@pytest.mark.parametrize(("accum", "bucket_size"), [(1, 10**6), (1, 16), (3, 16), (3, 10**6)])
def test_training_lands_on_deepspeeds_weights(tmp_path, accum, bucket_size):
    aligned = bucket_size == 16
    stock = engine_for(tmp_path, False, accum=accum, bucket_size=bucket_size, aligned=aligned)
    bucketed = engine_for(tmp_path, True, accum=accum, bucket_size=bucket_size, aligned=aligned)
    assert not hasattr(stock.optimizer, "gradient_buckets")
    buckets = bucketed.optimizer.gradient_buckets.buckets
    if aligned:   # lone parameters larger than a bucket, and a joined bucket with padding inside it
        assert any(len(bucket.params) == 1 for bucket in buckets)
        assert any(len(bucket.params) > 1 and any(bucket.paddings[:-1]) for bucket in buckets)
    xs = micro_batches(0, 4 * accum if accum > 1 else 8)
    assert_same_training(train(stock, xs), train(bucketed, xs))


def test_a_backward_that_reaches_no_parameter_gives_zero_gradients(tmp_path):
    """The only micro-batch of a step leaves every gradient empty: the step sees zeros, not the previous step's
    gradients, which the partition buffer still holds. (DeepSpeed's own reduction fails here: its epilogue
    reduces a bucket buffer that no hook has allocated.)"""
    engine = engine_for(tmp_path, True)
    engine.backward(engine(torch.randn(2, 5).to(engine.device, torch.bfloat16)))
    engine.step()
    assert any(float(grad.abs().max()) > 0 for grad in engine.optimizer.gradient_buckets.partitions)
    engine.backward(torch.zeros((), device=engine.device, requires_grad=True) * 2.0)
    grads = engine.optimizer.averaged_gradients
    assert grads and all(float(grad.abs().max()) == 0 for group in grads.values() for grad in group)
    engine.step()
    assert float(engine.get_global_grad_norm()) == 0


def test_the_backward_joins_each_bucket_once_where_deepspeed_copies_each_gradient(tmp_path):
    stock, bucketed = engine_for(tmp_path, False, bucket_size=16), engine_for(tmp_path, True, bucket_size=16)
    counts = {}
    for name, engine in (("stock", stock), ("bucketed", bucketed)):
        loss = engine(torch.ones(2, 5).to(engine.device, torch.bfloat16))   # every parameter gets a gradient
        with OperatorCount() as count:
            engine.backward(loss)
        counts[name] = count.calls
    params = sum(param.requires_grad for param in bucketed.module.parameters())
    buckets = bucketed.optimizer.gradient_buckets.buckets
    joined = sum(len(bucket.params) > 1 for bucket in buckets)
    assert counts["stock"]["copy_"] >= 2 * params
    assert counts["bucketed"]["cat"] == joined
    assert counts["bucketed"]["copy_"] + counts["bucketed"]["add_"] == len(buckets)   # into this rank's partition


def test_the_backward_never_makes_the_host_wait_for_the_device(tmp_path, monkeypatch):
    """No device-wide synchronisation and no operator that reads a value to the host, with the reductions on
    DeepSpeed's reduction stream. On a GPU, DeepSpeed's own path synchronises the device before each bucket's
    reduction (on a CPU it never does: nothing runs asynchronously there)."""
    accelerator = get_accelerator()
    waits = {}
    for bucketed in (False, True):
        engine = engine_for(tmp_path, bucketed, bucket_size=16, aligned=True)
        loss = engine(torch.ones(2, 5).to(engine.device, torch.bfloat16))
        synchronised = []
        device_wide = accelerator.synchronize
        monkeypatch.setattr(accelerator, "synchronize",
                            lambda *args, **kwargs: synchronised.append(1) or device_wide(*args, **kwargs))
        with HostSyncCensus() as census:
            engine.backward(loss)
        monkeypatch.undo()
        waits[bucketed] = (len(synchronised), sum(census.calls.values()))
    assert waits[True] == (0, 0)
    if accelerator.device_name() == "cuda":
        assert waits[False][0] > 0


class UsedTwice(torch.nn.Module):
    """One layer applied in two re-entrant checkpointed regions: its gradient reaches the parameter twice."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.requires_grad_()
        for _ in range(2):
            x = torch.utils.checkpoint.checkpoint(self.layer, x, use_reentrant=True)
        return x.square().mean()


def test_a_gradient_that_arrives_twice_is_refused(tmp_path):
    engine = engine_for(tmp_path, True, model=UsedTwice())
    loss = engine(torch.randn(2, 4).to(engine.device, torch.bfloat16))
    with pytest.raises(RuntimeError, match="arrived twice in one backward.*bucketed_grad_reduction=false"):
        engine.backward(loss)


def test_deepspeeds_coalesced_reduction_is_refused(tmp_path):
    engine = engine_for(tmp_path, True)
    with pytest.raises(RuntimeError, match="coalesce_grad_reduction.*bucketed_grad_reduction"):
        with engine.coalesce_grad_reduction():
            engine.backward(engine(torch.randn(2, 5).to(engine.device, torch.bfloat16)))


@pytest.mark.parametrize("stage", [1, 3])
def test_other_zero_stages_keep_deepspeeds_reduction(tmp_path, stage):
    engine = engine_for(tmp_path, True, stage=stage)
    assert not hasattr(engine.optimizer, "gradient_buckets")


TWO_RANKS = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch, torch.distributed as dist
from jala_ds.train.engine import init_distributed
from test_train_zero_grad_buckets import engine_for, micro_batches, train

init_distributed()
rank, out = dist.get_rank(), Path(sys.argv[2])
results = {}
for bucketed in (False, True):
    where = out / f"{bucketed}_rank{rank}"
    where.mkdir()
    engine = engine_for(where, bucketed, accum=2, bucket_size=16, aligned=True, world_size=2)
    if bucketed:
        results["split buckets"] = sum(len(b.pieces) > 1 for b in engine.optimizer.gradient_buckets.buckets)
    record = train(engine, micro_batches(rank, 8))
    results[str(bucketed)] = [{"weights": {k: v.tolist() for k, v in step["weights"].items()},
                               "skipped": bool(step["skipped"]), "norm": step["norm"]} for step in record]
(out / f"rank{rank}.json").write_text(json.dumps(results))
"""


@pytest.mark.slow
def test_two_ranks_land_on_deepspeeds_weights(tmp_path):
    """Each rank trains on its own micro-batches; buckets that straddle the two ranks' partitions are reduced
    piece by piece to their owners, and both ranks end on the weights DeepSpeed's reduction gives."""
    results = run_two_ranks(TWO_RANKS, [str(Path(__file__).parent)], tmp_path)
    assert results[0] == results[1]
    assert results[0]["split buckets"] > 0

    def tensors(record):
        return [{**step, "weights": {k: torch.tensor(v) for k, v in step["weights"].items()}} for step in record]

    assert_same_training(tensors(results[0]["False"]), tensors(results[0]["True"]))
