"""RMSNorm as the Qwen2 language model computes it, fused into one kernel per pass where Triton can run.

Eager PyTorch runs Qwen2's RMSNorm as seven kernels forward (cast up, square, mean, add, rsqrt, multiply, cast
down, scale) and about twice as many backward, each a round trip of the activations through memory, fp32 on the
way. The fused kernel reads the row once and writes it once each way. Same rounding as eager: the normalised
row is rounded to the input dtype before the weight scales it.

    y = rms_norm(x, weight, eps)        # x [..., H], weight [H] -> [..., H] in promote(x, weight) dtype

CUDA tensors go to Triton; CPU tensors to the Triton interpreter when ``TRITON_INTERPRET=1`` is set at call time,
and to ``rms_norm_reference`` otherwise (float64 too).
"""
from __future__ import annotations

import torch

from jala_kernels.dispatch import runs_kernel


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2RMSNorm's forward, written out: the definition the kernel is checked against."""
    normalised = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return weight * normalised.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / rms(x)`` over the last dim, differentiable in ``x`` and ``weight``."""
    if weight.dim() != 1 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"rms_norm: x [..., {x.shape[-1]}] needs a weight of shape [{x.shape[-1]}], got "
                         f"{tuple(weight.shape)}")
    if weight.device != x.device:
        raise ValueError(f"rms_norm: x is on {x.device} but weight on {weight.device}: move the weight to x's device")
    if not runs_kernel(x, weight):
        return rms_norm_reference(x, weight, eps)
    import jala_kernels.rms_norm_triton  # noqa: F401  registers torch.ops.jala_kernels.rms_norm

    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    return torch.ops.jala_kernels.rms_norm(rows, weight, float(eps))[0].view(*x.shape[:-1], x.shape[-1])
