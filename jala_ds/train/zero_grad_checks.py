"""ZeRO-1/2's gradient checks before each optimiser step, in a few multi-tensor launches instead of thousands.

Before it steps, DeepSpeed's ``DeepSpeedZeroOptimizer`` (ZeRO stages 1 and 2) makes two passes over this rank's
gradients, one tensor at a time:

- with bf16 (``bf16.check_grad_overflow``, on by default) it looks for inf/NaN in each gradient: ``amax``,
  ``amin``, two ``isfinite`` and their combination, a dozen operators per tensor once ``isfinite``'s own count;
- for clipping it takes each gradient's L2 norm after copying it to fp64: three more.

The full recipe trains 847 tensors. ``python -m benchmarks.zero_grad_checks`` counts 18,738 operator calls in one
ZeRO-2 optimiser step with these two passes and 4,360 without (the rest are mostly views, which launch nothing),
for a few milliseconds of arithmetic. On a GPU each call is a kernel launch with its host-side set-up, and the
full recipe's step is host-bound: on an H200, under the profiler, the overflow check's ``isfinite``, ``amax``
and ``amin`` alone held 160 ms of host time per step
(``benchmarks/results/2026-11-27_h200_variants/lease5_zero2_compiled_profile.txt``, two steps; the profiler
inflates host time, 776 ms per step against 466 ms unprofiled). ``torch._foreach_norm`` computes every
gradient's norm in a handful of launches.

``use_multi_tensor_grad_checks`` replaces the two passes on one optimiser instance:

- overflow: a tensor that holds an inf or a NaN has a norm that is not finite (an inf stays inf through the sum
  of squares, a NaN propagates), so the gradients' norms are tested instead of their elements;
- norm: each gradient's L2 norm accumulated in fp32 rather than fp64, then DeepSpeed's all-reduce, square root
  and inf/NaN masking. The clip factor differs from DeepSpeed's by float rounding (~1e-6 relative).

One decision differs: finite gradients whose norm exceeds 1.8e19 (the sum of squares overflows fp32) make the step
skipped where DeepSpeed's fp64 norm would clip it. Gradients that large mean the run has already diverged.

Both are checked against DeepSpeed's own methods in ``tests/test_train_zero_grad_checks.py``. What the
replacement does not cover (model or pipeline parallelism, a norm other than L2) goes to DeepSpeed's method.
ZeRO-3 already checks overflow on its one flat gradient buffer, so it is left as it is.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence

import torch
from deepspeed import comm as dist
from deepspeed.runtime.utils import mask_nan_or_inf_with_val_inplace
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer


def squared_norms_sum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over ``tensors`` of their squared L2 norms, accumulated in fp32 (fp64 tensors in fp64), as a
    one-element fp32 tensor on their device; ``_foreach_norm`` takes one fast path per (device, dtype), so the
    tensors are grouped first."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = defaultdict(list)
    for tensor in tensors:
        groups[(tensor.device, tensor.dtype)].append(tensor)
    sums = [torch.stack(torch._foreach_norm(group, 2, dtype=torch.promote_types(dtype, torch.float32))).square()
            .sum().float() for (_, dtype), group in groups.items()]
    return torch.stack(sums).sum().reshape(1)


def _has_overflow(optimizer: DeepSpeedZeroOptimizer) -> torch.Tensor:
    """Stands in for ``has_overflow_partitioned_grads_serial``: whether any of this rank's partitioned gradients
    holds an inf or a NaN, as a one-element bool tensor on the device (``has_overflow`` all-reduces it)."""
    grads = [grad for i in range(len(optimizer.bit16_groups)) for grad in optimizer.averaged_gradients[i]
             if grad is not None]
    if not grads:
        return torch.zeros(1, dtype=torch.bool, device=optimizer.device)
    return squared_norms_sum(grads).isfinite().logical_not()


def _grad_norm(optimizer: DeepSpeedZeroOptimizer, stock_grad_norm, gradients, params, norm_type=2) -> torch.Tensor:
    """Stands in for ``get_grad_norm_direct``: the L2 norm of this group's gradients over the data-parallel
    group, -1 when it is not finite (DeepSpeed's sentinel, which ``step`` turns into a skipped step)."""
    if float(norm_type) != 2.0 or optimizer.model_parallel_group is not None or any(
            getattr(param, "ds_pipe_replicated", False) for param in params):
        return stock_grad_norm(gradients, params, norm_type)
    grads = [grad for grad in gradients if not getattr(grad, "_zero_padding", False)]
    if grads:
        total = squared_norms_sum(grads).to(optimizer.device)
    else:
        total = torch.zeros(1, dtype=torch.float32, device=optimizer.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=optimizer.dp_process_group)
    total = total.sqrt()[0]
    mask_nan_or_inf_with_val_inplace(total, device=optimizer.device)
    return total


def use_multi_tensor_grad_checks(optimizer: object) -> bool:
    """Replace ZeRO-1/2's per-gradient overflow check and norm on ``optimizer`` (the engine's); returns whether
    it did (not for ZeRO-3's or a plain optimiser)."""
    if not isinstance(optimizer, DeepSpeedZeroOptimizer):
        return False
    optimizer.has_overflow_partitioned_grads_serial = functools.partial(_has_overflow, optimizer)
    optimizer.get_grad_norm_direct = functools.partial(_grad_norm, optimizer, optimizer.get_grad_norm_direct)
    return True
