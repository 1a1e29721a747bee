"""ZeRO-1/2's bf16 optimiser step without reading a value from the device: the skip decision moves into torch's
fused AdamW.

DeepSpeed's ``DeepSpeedZeroOptimizer.step`` (0.19.8) decides on the host whether to skip a step whose gradients
hold an inf or a NaN. With bf16 it reads the device four times per step: the overflow flag, whether the norm is
invalid, and twice more while clipping (``is_invalid_grad_norm`` calls ``bool()`` on a tensor). Each read makes
the host wait until the GPU has run everything queued, so the GPU then idles while the host queues the optimiser
and the next forward. Once the forward and the backward queue work without waiting (``tests/host_syncs.py``
counts it), the step is the one place per step where the host stops.

torch's fused Adam/AdamW takes the decision on the device: given a ``found_inf`` tensor it leaves weights,
moments and step count untouched when the flag is 1 (``torch.amp.GradScaler`` uses the same argument).
``use_sync_free_step`` therefore, on one optimiser instance:

- turns DeepSpeed's host-side overflow check off (``check_grad_overflow``): the norm DeepSpeed computes anyway
  is not finite (or is its -1 sentinel) exactly when a gradient holds an inf or a NaN, and is the same on
  every rank after its all-reduce;
- replaces ``unscale_and_clip_grads`` with the same arithmetic on the device (the clip factor is already a
  tensor there; only the invalid-norm test read it on the host) and sets the fused optimiser's ``found_inf``
  from the norm.

Steps that are applied land on weights bit-identical to DeepSpeed's; a skipped step leaves weights, moments and
the step count as they were, as DeepSpeed's early return does. Two things differ on a skipped step, because the
host no longer knows of it when the step returns: the learning-rate schedule advances (as it does in a plain
PyTorch loop with a ``GradScaler``), and DeepSpeed's ``engine.skipped_steps`` does not count it; the training
loop counts skipped steps from ``skipped_flag`` instead, on the device, and logs them.
Checked against DeepSpeed's step in ``tests/test_train_zero_sync_free_step.py``.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer


def use_sync_free_step(optimizer: object) -> bool:
    """Let ``optimizer`` (the engine's) step without reading the device; returns whether it did. Declines, leaving
    DeepSpeed's step, where the decision cannot move to the device: not ZeRO-1/2, not bf16 (fp16's loss scale and
    fp32's invalid-norm test are decided on the host inside ``step``), no clipping (then no norm is computed),
    CPU offload, an optimiser other than torch's fused Adam/AdamW, or an overflow check the config turned off."""
    if not isinstance(optimizer, DeepSpeedZeroOptimizer) or optimizer.dtype != torch.bfloat16:
        return False
    inner = optimizer.optimizer
    fused = isinstance(inner, torch.optim.Adam | torch.optim.AdamW) and all(
        group.get("fused") for group in inner.param_groups)
    if (not fused or optimizer.cpu_offload or optimizer.clip_grad <= 0 or not optimizer.compute_grad_norm
            or not optimizer.check_grad_overflow or optimizer.torch_autocast_gradscaler or optimizer.zenflow
            or getattr(optimizer, "use_muon", False)):
        return False
    optimizer.check_grad_overflow = False
    optimizer.sync_free_step = True
    optimizer.unscale_and_clip_grads = functools.partial(_clip_and_flag, optimizer)
    inner.found_inf = torch.zeros((), dtype=torch.float32, device=optimizer.device)
    return True


def _clip_and_flag(optimizer: DeepSpeedZeroOptimizer, grad_groups_flat: list[Any], total_norm: torch.Tensor) -> None:
    """Stands in for ``unscale_and_clip_grads``: DeepSpeed's clip of the flat gradients by
    ``max(1, (norm + 1e-6) / clip)``, all on the device, and the fused optimiser's ``found_inf`` set to whether
    the norm is invalid (not finite, or DeepSpeed's -1)."""
    invalid = ~torch.isfinite(total_norm) | (total_norm < 0)
    optimizer.optimizer.found_inf = invalid.to(torch.float32).reshape(())
    clip_norm = torch.where(invalid, torch.full_like(total_norm, float("inf")), total_norm)
    clip = ((clip_norm / optimizer.loss_scale) + 1e-6) / optimizer.clip_grad
    combined_scale = torch.clamp(clip, min=1.0) * optimizer.loss_scale
    for grad in grad_groups_flat:
        for piece in grad if isinstance(grad, list) else [grad]:
            piece.data.mul_(1. / combined_scale)


def skipped_flag(engine: Any) -> torch.Tensor | float:
    """1.0 if the engine's last optimiser step was skipped, else 0.0: a tensor on the device (never read here)
    after a sync-free step, else DeepSpeed's host-side verdict as a float (a host tensor would be one more copy to
    the device)."""
    if getattr(engine.optimizer, "sync_free_step", False):
        return engine.optimizer.optimizer.found_inf
    return 0.0 if engine.was_step_applied() else 1.0
