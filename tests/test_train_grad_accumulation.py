"""bf16 runs of several micro-batches per step sum their gradients in fp32 (``ds_config.accumulate_in_fp32``):
the gradient the optimiser sees is the exact sum of the micro-batches' bf16 gradients, on real ZeRO-2 and ZeRO-3
engines, where DeepSpeed's default bf16 sum is not."""
from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pytest
import torch
from deepspeed.utils import safe_get_full_grad
from train_parts import OnlineAndTarget, world_of_one
from two_ranks import run_two_ranks

from jala_ds.train.config import TrainConfig
from jala_ds.train.ds_config import PROJECT_ROOT, build_ds_config
from jala_ds.train.engine import build_engine

MICRO_BATCHES = 16


def ds_config(tmp_path, stage: int, dtype: str = "bf16", accum: int = MICRO_BATCHES, world_size: int = 1,
              **data_types) -> dict:
    template = json.loads((PROJECT_ROOT / "ds_configs" / "cpu.json").read_text())
    template["zero_optimization"]["stage"] = stage
    if data_types:
        template["data_types"] = data_types
    path = tmp_path / f"stage{stage}.json"
    path.write_text(json.dumps(template))
    return build_ds_config(train_config(path, dtype, accum, world_size), world_size)


def train_config(path, dtype: str = "bf16", accum: int = MICRO_BATCHES, world_size: int = 1) -> TrainConfig:
    return TrainConfig(micro_batch_size=2, global_batch_size=2 * accum * world_size, grad_accum_steps=accum,
                       ds_config=str(path), dtype=dtype, grad_clip=1.0)


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_accumulation_over_micro_batches_is_in_fp32_under_zero_2_and_3(tmp_path, stage):
    assert ds_config(tmp_path, stage)["data_types"] == {"grad_accum_dtype": "fp32"}
    assert "data_types" not in ds_config(tmp_path, stage, accum=1), "one micro-batch sums nothing: DeepSpeed's path"
    assert "data_types" not in ds_config(tmp_path, stage, dtype="fp32")
    assert ds_config(tmp_path, stage, grad_accum_dtype="bf16")["data_types"] == {"grad_accum_dtype": "bf16"}


def test_zero_1_keeps_deepspeeds_default(tmp_path):
    assert "data_types" not in ds_config(tmp_path, 1)  # fp32 there would swap DeepSpeed's optimiser class


def micro_batches(rank: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(rank)
    return [torch.randn(2, 8, generator=generator) + 3 for _ in range(MICRO_BATCHES)]


def exact_sums(model: torch.nn.Module, world_size: int) -> dict[str, torch.Tensor]:
    """Per trained parameter, what an exact accumulation gives: each micro-batch's bf16 gradient, computed alone,
    averaged over the ranks as it travels (in bf16: the reduction rounds once per micro-batch), then summed over
    the micro-batches in float64."""
    replica = copy.deepcopy(model).to(torch.bfloat16)
    names = [name for name, param in replica.named_parameters() if param.requires_grad]
    sums = {name: torch.zeros(replica.get_parameter(name).shape, dtype=torch.float64) for name in names}
    for ranks_batches in zip(*(micro_batches(rank) for rank in range(world_size))):
        reduced = dict.fromkeys(names, 0)
        for x in ranks_batches:
            replica.zero_grad()
            (replica(x.to(torch.bfloat16)) / MICRO_BATCHES).backward()
            for name in names:
                reduced[name] = reduced[name] + replica.get_parameter(name).grad.float()
        for name in names:
            sums[name] += (reduced[name].to(torch.bfloat16) / world_size).double()
    return sums


def accumulated_and_exact(ds: dict, tmp_path, world_size: int = 1) -> dict[str, float]:
    """The largest error of the online layer's weight gradient after ``MICRO_BATCHES`` micro-batches, as the
    optimiser sees it, against ``exact_sums`` (relative to the largest element), and the step's clipping norm
    against the exact sums' norm."""
    import torch.distributed as dist

    torch.manual_seed(0)
    model = OnlineAndTarget()
    sums = exact_sums(model, world_size)
    exact_norm = float(torch.stack([grad.square().sum() for grad in sums.values()]).sum().sqrt())
    config = train_config(tmp_path / "unused.json", world_size=world_size)
    with contextlib.nullcontext() if world_size > 1 else world_of_one():
        engine = build_engine(model, ds, config, total_steps=4)
        batches = micro_batches(dist.get_rank())
        for i, x in enumerate(batches):
            engine.backward(engine(x.to(torch.bfloat16)))
            if i < MICRO_BATCHES - 1:
                engine.step()
        accumulated = safe_get_full_grad(engine.module.online.weight).double()
        engine.step()
    exact = sums["online.weight"]
    return {"error": float((accumulated - exact).abs().max() / exact.abs().max()),
            "norm": float(engine.get_global_grad_norm()), "exact_norm": exact_norm}


@pytest.mark.parametrize("stage", [2, 3])
def test_the_optimiser_sees_the_exact_sum_of_the_micro_batches_gradients(tmp_path, stage):
    found = accumulated_and_exact(ds_config(tmp_path, stage), tmp_path)
    assert found["error"] < 1e-6
    assert found["norm"] == pytest.approx(found["exact_norm"], rel=1e-6), "the clipping norm (ZeRO-2: ours)"


def test_deepspeeds_bf16_sum_misses_it(tmp_path):
    """What the fp32 sum fixes, on the same data: DeepSpeed's default rounds every partial sum to bf16."""
    ds = ds_config(tmp_path, 3)
    del ds["data_types"]
    assert accumulated_and_exact(ds, tmp_path)["error"] > 1e-3


TWO_RANKS = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch.distributed as dist
from jala_ds.train.engine import init_distributed
from test_train_grad_accumulation import accumulated_and_exact, ds_config

init_distributed()
rank, out = dist.get_rank(), Path(sys.argv[2])
results = {}
for stage in (2, 3):
    (out / f"stage{stage}_rank{rank}").mkdir()
    where = out / f"stage{stage}_rank{rank}"
    results[stage] = accumulated_and_exact(ds_config(where, stage, world_size=2), where, world_size=2)
(out / f"rank{rank}.json").write_text(json.dumps(results))
"""


@pytest.mark.slow
def test_two_ranks_reduce_the_exact_sums(tmp_path):
    """Each rank sums its own micro-batches; ZeRO-2 and -3 then reduce the fp32 sums across the ranks."""
    results = run_two_ranks(TWO_RANKS, [str(Path(__file__).parent)], tmp_path)
    assert results[0] == results[1]
    for found in results[0].values():
        assert found["error"] < 1e-6
        assert found["norm"] == pytest.approx(found["exact_norm"], rel=1e-6)
