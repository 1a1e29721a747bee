"""The sharded fp32 EMA: plain tensors in one process, and ZeRO-3 on 2 ranks (gloo, CPU) against an fp32 reference.

The 2-rank test runs this file under torchrun (``python -m torch.distributed.run --nproc_per_node 2
tests/test_train_zero_ema.py OUT``); the workers write what they measured to OUT and the test checks it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_parts import EMA_PAIRS as PAIRS
from train_parts import OnlineAndTarget

from jala_ds.train.zero_ema import ShardedEMA

WIDTH = 400  # a 400x400 weight (160k elements) is partitioned, its 400-element bias persistent (threshold 1e5)


def reference_ema(target: torch.Tensor, source: torch.Tensor, tau: float) -> torch.Tensor:
    return target.float().mul(tau).add(source.float(), alpha=1.0 - tau)


def train_plain(model: OnlineAndTarget, ema: ShardedEMA, steps: int) -> list[dict[str, torch.Tensor]]:
    """A few AdamW steps on the online layer; returns the source values each EMA update saw."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(steps):
        x = torch.randn(4, model.online.in_features, generator=gen).to(model.online.weight.dtype)
        model(x).backward()
        opt.step()
        opt.zero_grad()
        seen.append({name: p.detach().clone() for name, p in model.online.named_parameters()})
        ema.update()
    return seen


def test_plain_tensors_follow_the_fp32_reference():
    torch.manual_seed(0)
    model = OnlineAndTarget(width=8)
    start = {name: p.detach().clone() for name, p in model.target.named_parameters()}
    ema = ShardedEMA(model, PAIRS, tau=0.9)
    expected = start
    for source in train_plain(model, ema, steps=5):
        expected = {name: reference_ema(expected[name], source[name], 0.9) for name in expected}
    for name, param in model.target.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=0, atol=0)
        assert not torch.equal(param.detach(), start[name]), "the target never moved"


def progress(value: torch.Tensor, start: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of the reference EMA's movement away from ``start`` that ``value`` made (1 = all of it)."""
    wanted = reference.float() - start.float()
    return float((value.float() - start.float()).mul(wanted).sum() / wanted.square().sum())


def test_bf16_parameters_keep_moving_where_a_bf16_ema_stalls():
    torch.manual_seed(0)
    model = OnlineAndTarget(width=64).to(torch.bfloat16)
    ema = ShardedEMA(model, PAIRS, tau=0.9999)
    start = model.target.weight.detach().clone()
    naive, reference = start.clone(), start.float()
    for source in train_plain(model, ema, steps=20):
        naive = naive.mul(0.9999).add(source["weight"], alpha=1e-4)  # the same update, kept in bf16
        reference = reference_ema(reference, source["weight"], 0.9999)
    assert abs(progress(naive, start, reference)) < 0.1, "a bf16 EMA at tau=0.9999 should have stalled"
    assert progress(ema.shadows["target.weight"], start, reference) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(ema.shadows["target.weight"], reference, rtol=0, atol=0)


def test_state_round_trip_restores_shadows_and_targets():
    torch.manual_seed(0)
    model = OnlineAndTarget(width=8)
    ema = ShardedEMA(model, PAIRS, tau=0.5)
    train_plain(model, ema, steps=2)
    saved = ema.state_dict()
    fresh_model = OnlineAndTarget(width=8)
    fresh = ShardedEMA(fresh_model, PAIRS, tau=0.5)
    fresh.load_state_dict(saved)
    for name, param in fresh_model.target.named_parameters():
        torch.testing.assert_close(param.detach(), saved[f"target.{name}"], rtol=0, atol=0)


@pytest.mark.parametrize("pairs, match", [
    ([("target.weight", "online.nope")], "no parameter 'online.nope'"),
    ([("online.weight", "target.weight")], "requires grad"),
    ([("target.weight", "head.weight")], "different shapes"),
])
def test_bad_pairs_are_refused_with_the_fix(pairs, match):
    with pytest.raises(ValueError, match=match):
        ShardedEMA(OnlineAndTarget(width=8), pairs, tau=0.9)


@pytest.mark.parametrize("target_first", [False, True])
def test_zero3_pairs_held_differently_follow_the_reference(tmp_path, target_first):
    """``stage3_model_persistence_threshold`` runs out between a source and its target, so one is whole on every
    rank and the other partitioned (it crashed the update: the shadow and the source had different shapes)."""
    import deepspeed
    from train_parts import ds_config_for, world_of_one

    with world_of_one():
        ds = ds_config_for(tmp_path, 3, "fp32")
        # online's 97 elements come first and fit; target's do not (target_first: the reverse)
        ds["zero_optimization"]["stage3_model_persistence_threshold"] = 80 if target_first else 100
        torch.manual_seed(0)
        with deepspeed.zero.Init(config_dict_or_path=ds):
            model = OnlineAndTarget(width=8)
        if target_first:   # DeepSpeed hands out the budget in named_parameters() order
            model._modules = {"target": model._modules.pop("target"), **model._modules}
        engine, *_ = deepspeed.initialize(model=model, config=ds,
                                          model_parameters=[p for p in model.parameters() if p.requires_grad])
        assert model.online.weight.ds_persist is not target_first and model.target.weight.ds_persist is target_first
        ema = ShardedEMA(model, PAIRS, tau=0.9)
        reference = gathered(list(model.target.parameters()))
        for _ in range(3):
            engine.backward(engine(torch.randn(2, 8)))
            engine.step()
            reference = [reference_ema(r, s, 0.9) for r, s in zip(reference, gathered(list(model.online.parameters())))]
            ema.update()
        for got, expected in zip(gathered(list(model.target.parameters())), reference):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_zero3_two_ranks_matches_gathered_fp32_reference_with_production_thresholds(tmp_path):
    """2 ranks: after k steps the gathered targets equal an fp32 reference; bf16 at tau=0.9999 does not stall."""
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29641",
           __file__, str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fp32 = torch.load(tmp_path / "fp32.pt", weights_only=True)
    assert fp32["weight_persistent"] is False and fp32["bias_persistent"] is True
    for name in ("weight", "bias"):
        torch.testing.assert_close(fp32[f"gathered_{name}"], fp32[f"reference_{name}"], rtol=1e-6, atol=1e-7)
        assert not torch.equal(fp32[f"reference_{name}"], fp32[f"initial_{name}"])
    torch.testing.assert_close(fp32["forward"], fp32["reference_forward"], rtol=1e-5, atol=1e-6)
    assert fp32["bias_data_matches_on_every_rank"]
    bf16 = torch.load(tmp_path / "bf16.pt", weights_only=True)
    for name in ("weight", "bias"):
        torch.testing.assert_close(bf16[f"shadow_{name}"], bf16[f"reference_{name}"], rtol=1e-6, atol=1e-8)
        assert torch.equal(bf16[f"gathered_{name}"], bf16[f"reference_{name}"].to(torch.bfloat16))
    assert abs(bf16["naive_progress"]) < 0.1 and bf16["ours_progress"] == pytest.approx(1.0, abs=1e-5)


def gathered(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    import deepspeed
    with deepspeed.zero.GatheredParameters(params):
        return [p.detach().float().clone() for p in params]


def gather_shadow(ema: ShardedEMA, name: str, param: torch.nn.Parameter) -> torch.Tensor:
    """The full fp32 shadow: shards concatenated in rank order (persistent parameters hold it whole)."""
    import torch.distributed as dist
    shadow = ema.shadows[name]
    if param.ds_persist:
        return shadow.clone()
    pieces = [torch.empty_like(shadow) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, shadow)
    return torch.cat(pieces)[:param.ds_numel].view(param.ds_shape)


def run_worker(out: Path, dtype: str, tau: float, steps: int) -> None:
    """One ZeRO-3 run with ``ds_configs/cpu.json`` (production persistence threshold) and a full-tensor reference."""
    import deepspeed
    import torch.distributed as dist

    from jala_ds.train.config import TrainConfig
    from jala_ds.train.ds_config import build_ds_config

    train = TrainConfig(micro_batch_size=2, global_batch_size=4, ds_config="ds_configs/cpu.json", dtype=dtype,
                        lr=1e-2)
    ds = build_ds_config(train, world_size=dist.get_world_size())
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds):
        model = OnlineAndTarget(width=WIDTH)
    engine, *_ = deepspeed.initialize(model=model, config=ds,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    online, target = list(model.online.parameters()), list(model.target.parameters())
    reference = gathered(target)
    initial = [t.clone() for t in reference]
    naive = [t.to(torch.bfloat16) for t in reference]
    ema = ShardedEMA(model, PAIRS, tau=tau)
    gen = torch.Generator().manual_seed(1 + dist.get_rank())
    x = torch.randn(2, WIDTH, generator=gen).to(engine.module.online.weight.dtype)
    for step in range(steps + 1):
        engine.backward(engine(x))
        engine.step()
        if step == steps:
            break  # the last step only re-gathers: the EMA's writes must survive DeepSpeed's re-gather
        sources = gathered(online)
        reference = [reference_ema(r, s, tau) for r, s in zip(reference, sources)]
        naive = [n.mul(tau).add(s.to(torch.bfloat16), alpha=1.0 - tau) for n, s in zip(naive, sources)]
        ema.update()
    result = {"weight_persistent": model.target.weight.ds_persist, "bias_persistent": model.target.bias.ds_persist}
    bias_here = model.target.bias.data.float().clone()  # read before any gather: what the forward reads as is
    bias_everywhere = [torch.empty_like(reference[1]) for _ in range(dist.get_world_size())]
    dist.all_gather(bias_everywhere, bias_here)
    result["bias_data_matches_on_every_rank"] = all(torch.equal(b, reference[1]) for b in bias_everywhere)
    for name, gathered_value, ref, init in zip(("weight", "bias"), gathered(target), reference, initial):
        result.update({f"gathered_{name}": gathered_value, f"reference_{name}": ref, f"initial_{name}": init})
    with torch.no_grad():
        result["forward"] = engine.module.target(x).float()
    result["reference_forward"] = torch.nn.functional.linear(x.float(), reference[0], reference[1])
    if dtype == "bf16":
        for name, param in (("weight", model.target.weight), ("bias", model.target.bias)):
            result[f"shadow_{name}"] = gather_shadow(ema, f"target.{name}", param)
        result["naive_progress"] = progress(naive[0], initial[0], reference[0])
        result["ours_progress"] = progress(result["shadow_weight"], initial[0], reference[0])
    if dist.get_rank() == 0:
        torch.save(result, out / f"{dtype}.pt")
    dist.barrier()


if __name__ == "__main__":
    from jala_ds.train.engine import init_distributed

    os.chdir(Path(__file__).resolve().parents[1])
    init_distributed()
    run_worker(Path(sys.argv[1]), "fp32", tau=0.9, steps=4)
    run_worker(Path(sys.argv[1]), "bf16", tau=0.9999, steps=20)
    # Leaving the group to the interpreter's exit once aborted a rank ("terminate called without an active
    # exception") after the results were written.
    torch.distributed.destroy_process_group()
