"""Model FLOPs and MFU for the training log, from the analytic count the planner and benchmarks also use.

The count is ``jala_ds.bench.flops.recipe_flops``: for every part of the model (vision tower, projector,
language model, LM head, frame encoder, perceivers), 2 FLOPs per multiply-add of its weights on each token it
processes, times 3 for a trained part (forward, input gradient, weight gradient), plus QK^T and PV on the
visible (query, key) pairs of the attention; in short ``6 * trainable params * tokens + attention``, applied
part by part to the recipe's average sample. Training logs use it as is, so a run's MFU and the benchmarks'
MFU are the same quantity: model FLOP/s over the card's dense bf16 peak (``jala_ds.bench.cards``).
"""
from __future__ import annotations

import torch

from jala_ds.bench import cards
from jala_ds.bench.flops import recipe_flops
from jala_ds.config import JalaConfig


def flops_per_sample(cfg: JalaConfig) -> float:
    """Training FLOPs of the recipe's average sample (forward + backward)."""
    return recipe_flops(cfg).per_sample


def device_peak_flops() -> float | None:
    """Dense bf16 peak FLOP/s of this rank's GPU; None on a CPU or an unknown card (then MFU is not logged)."""
    if not torch.cuda.is_available():
        return None
    try:
        return cards.card(torch.cuda.get_device_name()).bf16_tflops * 1e12
    except ValueError:
        return None
