"""Fused RMSNorm in Triton, as the custom operator ``torch.ops.jala_kernels.rms_norm`` with its autograd (imports
Triton: load it only on the kernel path, through ``jala_kernels.rms_norm``).

Forward: each program normalises a run of rows, one row at a time in registers (the LM's 1536 features fit),
and keeps each row's fp32 ``1 / rms`` for the backward. Backward: ``dx = rstd * (g - x_hat * mean(g * x_hat))``
with ``g = dy * weight`` and ``x_hat = x * rstd``, row by row, while each program sums its rows' ``dy * x_hat``
into an fp32 partial weight gradient; one more reduction adds the partials. No atomics, so the weight gradient
is the same from run to run.

A custom operator is one opaque node to ``torch.compile``, so compiled layers (``train.compile_blocks``) keep
the call inside their graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jala_kernels.triton_mode import built_for_interpreter, check_triton_mode

MAX_FEATURES = 65536
"""Widest row a program holds in registers."""
FORWARD_ROWS_PER_PROGRAM = 4
"""Forward: enough programs to fill the GPU at the LM's ~10k rows, each loading the weight once per 4 rows."""
BACKWARD_PROGRAMS = 512
"""Backward: at most this many programs (and fp32 partial weight gradients) share the rows: a few per SM."""


@triton.jit
def rms_norm_forward_kernel(X, W, Y, RSTD, n_rows, n_cols, rows_per_program, stride_x, stride_y, eps,
                            BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    col_ok = cols < n_cols
    weight = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    first = tl.program_id(0) * rows_per_program
    for i in range(rows_per_program):
        row = first + i
        ok = col_ok & (row < n_rows)
        x = tl.load(X + row.to(tl.int64) * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        # Eager rounds the normalised row to the input dtype before the weight scales it; so does this.
        normalised = (x * rstd).to(X.dtype.element_ty).to(tl.float32)
        tl.store(Y + row.to(tl.int64) * stride_y + cols, (normalised * weight).to(Y.dtype.element_ty), mask=ok)
        tl.store(RSTD + row, rstd, mask=row < n_rows)


@triton.jit
def rms_norm_backward_kernel(DY, X, W, RSTD, DX, DW_PARTIAL, n_rows, n_cols, rows_per_program, stride_dy,
                             stride_x, stride_dx, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    col_ok = cols < n_cols
    weight = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    weight_grad = tl.zeros([BLOCK], dtype=tl.float32)
    first = tl.program_id(0) * rows_per_program
    for i in range(rows_per_program):
        row = first + i
        row_ok = row < n_rows
        ok = col_ok & row_ok
        x = tl.load(X + row.to(tl.int64) * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + row.to(tl.int64) * stride_dy + cols, mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row, mask=row_ok, other=0.0)
        x_hat = x * rstd
        weight_grad += dy * x_hat.to(X.dtype.element_ty).to(tl.float32)
        g = dy * weight
        dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / n_cols))
        tl.store(DX + row.to(tl.int64) * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=ok)
    tl.store(DW_PARTIAL + tl.program_id(0).to(tl.int64) * n_cols + cols, weight_grad, mask=col_ok)


INTERPRETED = built_for_interpreter(rms_norm_forward_kernel)
"""Whether the kernels were built for Triton's CPU interpreter (``TRITON_INTERPRET=1`` when first imported)."""


def _launch_shape(n_cols: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for rows of ``n_cols`` features: the whole row in one block, a warp per 256 of them."""
    block = triton.next_power_of_2(n_cols)
    return block, 1 if INTERPRETED else min(max(block // 256, 1), 16)


@torch.library.custom_op("jala_kernels::rms_norm", mutates_args=())
def rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [R, H]`` (unit stride along H), ``weight [H]`` -> ``(y [R, H], rstd fp32 [R])``."""
    check_triton_mode("rms_norm", x, INTERPRETED)
    n_rows, n_cols = x.shape
    if n_cols > MAX_FEATURES:
        raise ValueError(f"rms_norm: rows of {n_cols} features exceed the kernel's {MAX_FEATURES}: call "
                         "jala_kernels.rms_norm_reference")
    y = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return y, rstd
    block, warps = _launch_shape(n_cols)
    rows_per_program = FORWARD_ROWS_PER_PROGRAM
    rms_norm_forward_kernel[(triton.cdiv(n_rows, rows_per_program),)](
        x, weight.contiguous(), y, rstd, n_rows, n_cols, rows_per_program, x.stride(0), y.stride(0), eps,
        BLOCK=block, num_warps=warps)
    return y, rstd


@rms_norm_op.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype)), x.new_empty(
        x.shape[0], dtype=torch.float32)


@torch.library.custom_op("jala_kernels::rms_norm_backward", mutates_args=())
def rms_norm_backward_op(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, dweight)`` in the dtypes of x and weight."""
    n_rows, n_cols = x.shape
    dx = torch.empty_like(x)
    programs = max(1, min(n_rows, BACKWARD_PROGRAMS))
    rows_per_program = triton.cdiv(max(n_rows, 1), programs)
    programs = triton.cdiv(max(n_rows, 1), rows_per_program)
    partial = torch.zeros(programs, n_cols, dtype=torch.float32, device=x.device)
    if n_rows:
        block, warps = _launch_shape(n_cols)
        rms_norm_backward_kernel[(programs,)](
            grad_y, x, weight.contiguous(), rstd, dx, partial, n_rows, n_cols, rows_per_program, grad_y.stride(0),
            x.stride(0), dx.stride(0), BLOCK=block, num_warps=warps)
    return dx, partial.sum(0).to(weight.dtype)


@rms_norm_backward_op.register_fake
def _(grad_y, x, weight, rstd):
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, weight, _ = inputs
    _, rstd = output
    ctx.save_for_backward(x, weight, rstd)
    ctx.mark_non_differentiable(rstd)


def _backward(ctx, grad_y: torch.Tensor, grad_rstd: torch.Tensor | None) -> tuple:
    x, weight, rstd = ctx.saved_tensors
    if grad_y.stride(-1) != 1:
        grad_y = grad_y.contiguous()
    dx, dweight = rms_norm_backward_op(grad_y, x, weight, rstd)
    return dx, dweight, None


rms_norm_op.register_autograd(_backward, setup_context=_setup_context)
