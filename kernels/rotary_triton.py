"""Fused rotary embedding in Triton, as the custom operator ``torch.ops.jala_kernels.rotary`` with its autograd
(imports Triton: load it only on the kernel path, through ``jala_kernels.rotary``).

One program rotates a block of tokens of one (batch, head): it loads the block, the block's partner half
(``rotate_half`` pairs feature i with i + D/2), and the angles, and writes the result in the input's layout. The
backward is the same kernel run on the output gradient with the rotation transposed:
``dx = dy * cos + R^T(dy * sin)``, where ``R^T`` pairs the halves with the opposite sign.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jala_kernels.triton_mode import built_for_interpreter, check_triton_mode

BLOCK_T, NUM_WARPS = 32, 8
"""Tokens per program and its warps: the largest tile that compiles for sm_90 without register spills in both
directions (``python -m jala_kernels.gpu_compile``; 16 tokens on 4 warps spilled in the backward)."""
INTERPRETER_BLOCK_T = 256
"""The interpreter pays per operation, not per element: tall tiles keep the tests quick."""


@triton.jit
def rotary_kernel(X, COS, SIN, OUT, n_tokens, n_heads, stride_xb, stride_xh, stride_xt, stride_ab, stride_at,
                  stride_ob, stride_oh, stride_ot, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr,
                  TRANSPOSED: tl.constexpr):
    batch = tl.program_id(1) // n_heads
    head = tl.program_id(1) % n_heads
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = (tokens < n_tokens)[:, None]
    cols = tl.arange(0, HEAD_DIM)
    first_half = cols < HEAD_DIM // 2
    partner = tl.where(first_half, cols + HEAD_DIM // 2, cols - HEAD_DIM // 2)
    rows = X + batch.to(tl.int64) * stride_xb + head * stride_xh + tokens.to(tl.int64)[:, None] * stride_xt
    x = tl.load(rows + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    x_partner = tl.load(rows + partner[None, :], mask=ok, other=0.0).to(tl.float32)
    angles = batch.to(tl.int64) * stride_ab + tokens.to(tl.int64)[:, None] * stride_at
    cos = tl.load(COS + angles + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    dtype = OUT.dtype.element_ty
    if TRANSPOSED:  # dx = dy * cos + R^T(dy * sin): the partner's product, + in the first half, - in the second
        sin_partner = tl.load(SIN + angles + partner[None, :], mask=ok, other=0.0).to(tl.float32)
        turned = (x_partner * sin_partner).to(dtype).to(tl.float32)
        turned = tl.where(first_half[None, :], turned, -turned)
    else:  # y = x * cos + R(x) * sin, R(x) = [-x2, x1]
        sin = tl.load(SIN + angles + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        turned = (tl.where(first_half[None, :], -x_partner, x_partner) * sin).to(dtype).to(tl.float32)
    out = (x * cos).to(dtype).to(tl.float32) + turned
    out_rows = OUT + batch.to(tl.int64) * stride_ob + head * stride_oh + tokens.to(tl.int64)[:, None] * stride_ot
    tl.store(out_rows + cols[None, :], out.to(dtype), mask=ok)


INTERPRETED = built_for_interpreter(rotary_kernel)
"""Whether the kernel was built for Triton's CPU interpreter (``TRITON_INTERPRET=1`` when first imported)."""


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, transposed: bool) -> torch.Tensor:
    batch, heads, tokens, head_dim = x.shape
    out = torch.empty_like(x)  # the input's layout: q and k arrive as transposed views of the projections
    if out.stride(-1) != 1:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        block_t, warps = (INTERPRETER_BLOCK_T, 1) if INTERPRETED else (BLOCK_T, NUM_WARPS)
        rotary_kernel[(triton.cdiv(tokens, block_t), batch * heads)](
            x, cos, sin, out, tokens, heads, x.stride(0), x.stride(1), x.stride(2), cos.stride(0), cos.stride(1),
            out.stride(0), out.stride(1), out.stride(2), HEAD_DIM=head_dim, BLOCK_T=block_t, TRANSPOSED=transposed,
            num_warps=warps)
    return out


@torch.library.custom_op("jala_kernels::rotary", mutates_args=())
def rotary_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [B, H, T, D]`` (unit stride along D), ``cos``/``sin [B, T, D]`` contiguous -> x rotated."""
    check_triton_mode("rotary", x, INTERPRETED)
    return _rotate(x, cos, sin, transposed=False)


@rotary_op.register_fake
def _(x, cos, sin):
    return torch.empty_like(x)


@torch.library.custom_op("jala_kernels::rotary_backward", mutates_args=())
def rotary_backward_op(grad_out: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The gradient of ``rotary`` with respect to x."""
    return _rotate(grad_out, cos, sin, transposed=True)


@rotary_backward_op.register_fake
def _(grad_out, cos, sin):
    return torch.empty_like(grad_out)


def _setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
    _, cos, sin = inputs
    ctx.save_for_backward(cos, sin)


def _backward(ctx, grad_out: torch.Tensor) -> tuple:
    cos, sin = ctx.saved_tensors
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    return rotary_backward_op(grad_out, cos, sin), None, None


rotary_op.register_autograd(_backward, setup_context=_setup_context)
