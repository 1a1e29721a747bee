"""Real parts the train tests share: a world of one rank, a small twin-layer model, DeepSpeed configs and steps."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from jala_ds.train.config import TrainConfig
from jala_ds.train.ds_config import PROJECT_ROOT, build_ds_config

EMA_PAIRS = [("target.weight", "online.weight"), ("target.bias", "online.bias")]


class OnlineAndTarget(torch.nn.Module):
    """A trained layer (``online``) and a frozen twin (``target``) that follows it by EMA, like LSP/LAP's trunks."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.online = torch.nn.Linear(width, width)
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, 1)
        self.target = torch.nn.Linear(width, width)
        self.target.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.head(self.norm(torch.tanh(self.online(x)))) - 1.0).square().mean()


@contextlib.contextmanager
def world_of_one() -> Iterator[None]:
    """A one-rank gloo group in this process (created once); the rank variables DeepSpeed reads are set only
    inside the ``with``, so subprocesses started by other tests do not mistake themselves for launched ranks."""
    import torch.distributed as dist

    from jala_ds.train.engine import init_distributed
    saved = dict(os.environ)
    if dist.is_initialized():
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    else:
        init_distributed()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def ds_config_for(tmp_path: Path, stage: int, dtype: str, world_size: int = 1, **train) -> dict:
    """The effective config from ``ds_configs/cpu.json`` with its ZeRO stage replaced by ``stage``."""
    template = json.loads((PROJECT_ROOT / "ds_configs" / "cpu.json").read_text())
    template["zero_optimization"]["stage"] = stage
    path = tmp_path / f"stage{stage}.json"
    path.write_text(json.dumps(template))
    micro = train.pop("micro_batch_size", 2)
    cfg = TrainConfig(micro_batch_size=micro, global_batch_size=micro * world_size, ds_config=str(path),
                      dtype=dtype, **train)
    return build_ds_config(cfg, world_size)


def train_step(engine, ema) -> float:
    """One optimiser step on a batch drawn from torch's global RNG (so RNG restore is part of what resume checks)."""
    x = torch.randn(2, engine.module.online.in_features).to(engine.module.online.weight.dtype)
    loss = engine(x)
    engine.backward(loss)
    engine.step()
    ema.update()
    return float(loss.detach())


def gathered_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole, as fp32 CPU tensors (a gather under ZeRO-3)."""
    import deepspeed
    params = dict(module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {name: p.detach().float().cpu().clone() for name, p in params.items()}
