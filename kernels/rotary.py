"""Rotary position embedding (RoPE) as Qwen2 applies it to queries and keys, fused where Triton can run.

Eager PyTorch rotates each of q and k with five kernels forward (two products, a negation, a concatenation, a
sum) and more backward; the fused kernel reads the head once and writes it once each way. Same roundings as
eager: both products are rounded to the input dtype before their sum.

    q = rotary(q, cos, sin)    # q [B, H, T, D] (any layout with unit stride along D), cos/sin [B, T, D]

CUDA tensors go to Triton; CPU tensors to the Triton interpreter when ``TRITON_INTERPRET=1`` is set at call time,
and to ``rotary_reference`` otherwise (also for head sizes that are not a power of two, and float64).
"""
from __future__ import annotations

import torch

from jala_kernels.dispatch import runs_kernel


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dim."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Qwen2's ``apply_rotary_pos_emb`` for one of q, k: the definition the kernel is checked against."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` rotated by the angles in ``cos``/``sin``; differentiable in ``x`` (the angles are constants)."""
    if x.dim() != 4 or cos.shape != sin.shape or cos.shape != (x.shape[0], x.shape[2], x.shape[3]):
        raise ValueError(f"rotary: x must be [B, H, T, D] and cos, sin [B, T, D]; got x {tuple(x.shape)}, cos "
                         f"{tuple(cos.shape)}, sin {tuple(sin.shape)}")
    if cos.device != x.device or sin.device != x.device:
        raise ValueError(f"rotary: x is on {x.device} but cos on {cos.device} and sin on {sin.device}: move the "
                         "angles to x's device")
    head_dim = x.shape[-1]
    # the kernel computes in x's dtype; angles of another dtype (cos or sin) promote in the reference, as in eager
    # Qwen2
    if (not runs_kernel(x) or head_dim < 2 or head_dim & (head_dim - 1) or cos.dtype != x.dtype
            or sin.dtype != x.dtype):
        return rotary_reference(x, cos, sin)
    import jala_kernels.rotary_triton  # noqa: F401  registers torch.ops.jala_kernels.rotary

    if x.stride(-1) != 1:
        x = x.contiguous()
    return torch.ops.jala_kernels.rotary(x, cos.contiguous(), sin.contiguous())
