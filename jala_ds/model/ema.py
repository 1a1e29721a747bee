"""Exponential moving average of target tensors towards source tensors, kept in fp32.

``target <- tau * target + (1 - tau) * source`` after every optimiser step. The running value lives in an fp32
shadow and the target only receives a rounded copy: with bf16 parameters and tau near 1 each step's increment
``(1 - tau) * (source - target)`` is far below bf16's resolution, so an EMA computed in bf16 never moves.

Works on plain tensors, so the trainer can hand it whole parameters or the rank-local ZeRO-3 shards of
equally-shaped pairs (``JalaModel.ema_pairs()`` names them).

    ema = FP32Ema([(lap_w, lsp_w), ...], tau=0.999)
    optimizer.step(); ema.step()
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class FP32Ema:
    """EMA of each ``(target, source)`` pair with an fp32 shadow of the target."""

    def __init__(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], tau: float):
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"EMA coefficient tau={tau} must lie in [0, 1) (model.ema_tau)")
        for i, (target, source) in enumerate(pairs):
            if target.shape != source.shape:
                raise ValueError(f"EMA pair {i}: target shape {tuple(target.shape)} != source shape "
                                 f"{tuple(source.shape)}: pair tensors of the same parameter")
        self.tau = tau
        self.targets = [target for target, _ in pairs]
        self.sources = [source for _, source in pairs]
        self.shadows = [target.detach().float().clone() for target in self.targets]

    @torch.no_grad()
    def step(self) -> None:
        """One update of every shadow from its source; the targets receive the shadows in their own dtype."""
        for target, source, shadow in zip(self.targets, self.sources, self.shadows):
            shadow.mul_(self.tau).add_(source.detach().float(), alpha=1.0 - self.tau)
            target.copy_(shadow)

    def state_dict(self) -> dict[str, Any]:
        """The fp32 shadows (tau is not state: it comes from the recipe, which may change it on resume)."""
        return {"shadows": [shadow.clone() for shadow in self.shadows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the shadows and write them into the targets (a checkpoint may hold the targets rounded)."""
        shadows = state["shadows"]
        if len(shadows) != len(self.shadows):
            raise ValueError(f"EMA state has {len(shadows)} shadows, this model pairs {len(self.shadows)} tensors: "
                             "the checkpoint was saved with another perceiver shape or model.decoupled_ema")
        with torch.no_grad():
            for shadow, saved, target in zip(self.shadows, shadows, self.targets):
                shadow.copy_(saved)
                target.copy_(shadow)
