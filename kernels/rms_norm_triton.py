"""Fused RMSNorm in Triton, as the custom operator ``torch.ops.jala_kernels.rms_norm`` with its autograd (imports
Triton: load it only on the kernel path, through ``jala_kernels.rms_norm``).

Forward: each program normalises a tile of whole rows in registers (2 of the LM's 1536-feature rows) and keeps
each row's fp32 ``1 / rms`` for the backward. Backward: ``dx = rstd * (g - x_hat * mean(g * x_hat))`` with
``g = dy * weight`` and ``x_hat = x * rstd``, tile by tile, while each program sums its rows' ``dy * x_hat`` into
an fp32 partial weight gradient; one more reduction adds the partials. No atomics, so the weight gradient
is the same from run to run. The backward's tile height and warps are autotuned on the GPU: with 2-row tiles on
16 warps it ran at 17 % of an H200's bandwidth in the full recipe's profile (2026-11-27).

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
TILE_ELEMENTS = 4096
"""Rows per tile on a GPU: as many as fit this many elements (2 rows of the LM's 1536 features, padded to 2048)."""
INTERPRETER_TILE_ROWS = 64
"""The interpreter pays per operation, not per element: tall tiles keep the tests quick."""
BACKWARD_PROGRAMS = 512
"""Backward: at most this many programs (and fp32 partial weight gradients) share the tiles: a few per SM."""
BACKWARD_TILES = ((1, 4), (1, 8), (2, 8), (2, 16), (4, 8), (4, 16))
"""(rows per tile, warps) the GPU autotuner tries for the backward, the first kernel's 2 rows on 16 warps among
them; 8 rows on 16 warps spilled registers for the LM's 1536 features (sm_90, ``gpu_compile``)."""
INTERPRETER_BACKWARD_PROGRAMS = 2
"""In the interpreter, few enough that a program loops over several tiles, as on a GPU."""


@triton.jit
def rms_norm_forward_kernel(X, W, Y, RSTD, n_rows, n_cols, stride_x, stride_y, eps, BLOCK: tl.constexpr,
                            BLOCK_R: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    col_ok = cols < n_cols
    weight = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    ok = row_ok[:, None] & col_ok[None, :]
    x = tl.load(X + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    # Eager rounds the normalised row to the input dtype before the weight scales it; so does this.
    normalised = (x * rstd[:, None]).to(X.dtype.element_ty).to(tl.float32)
    y = (normalised * weight[None, :]).to(Y.dtype.element_ty)
    tl.store(Y + rows.to(tl.int64)[:, None] * stride_y + cols[None, :], y, mask=ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def rms_norm_backward_kernel(DY, X, W, RSTD, DX, DW_PARTIAL, n_rows, n_cols, stride_dy, stride_x, stride_dx,
                             BLOCK: tl.constexpr, BLOCK_R: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    col_ok = cols < n_cols
    weight = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    weight_grad = tl.zeros([BLOCK], dtype=tl.float32)
    # Consecutive tiles per program; a program past the last tile writes a zero partial, so every row of
    # DW_PARTIAL is written whatever the tile height the autotuner picked.
    tiles_per_program = tl.cdiv(tl.cdiv(n_rows, BLOCK_R), tl.num_programs(0))
    first = tl.program_id(0) * tiles_per_program * BLOCK_R
    for i in range(tiles_per_program):
        rows = first + i * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < n_rows
        ok = row_ok[:, None] & col_ok[None, :]
        offsets = rows.to(tl.int64)[:, None]
        x = tl.load(X + offsets * stride_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + offsets * stride_dy + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)[:, None]
        x_hat = x * rstd
        weight_grad += tl.sum(dy * x_hat.to(X.dtype.element_ty).to(tl.float32), axis=0)
        g = dy * weight[None, :]
        dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=1) / n_cols)[:, None])
        tl.store(DX + offsets * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=ok)
    tl.store(DW_PARTIAL + tl.program_id(0).to(tl.int64) * n_cols + cols, weight_grad, mask=col_ok)


INTERPRETED = built_for_interpreter(rms_norm_forward_kernel)
"""Whether the kernels were built for Triton's CPU interpreter (``TRITON_INTERPRET=1`` when first imported)."""
BACKWARD_CONFIGS = ([triton.Config({"BLOCK_R": INTERPRETER_TILE_ROWS}, num_warps=1)] if INTERPRETED else
                    [triton.Config({"BLOCK_R": rows}, num_warps=warps) for rows, warps in BACKWARD_TILES])
rms_norm_backward_tuned = triton.autotune(configs=BACKWARD_CONFIGS, key=["n_cols"])(rms_norm_backward_kernel)


def launch_shape(n_cols: int) -> tuple[int, int, int]:
    """The forward's (BLOCK, BLOCK_R, num_warps) for rows of ``n_cols`` features: whole rows, a tile of
    ``TILE_ELEMENTS``, a warp per 256 elements of it."""
    block = triton.next_power_of_2(n_cols)
    if INTERPRETED:
        return block, INTERPRETER_TILE_ROWS, 1
    tile_rows = max(1, TILE_ELEMENTS // block)
    return block, tile_rows, min(max(block * tile_rows // 256, 1), 16)


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
    block, tile_rows, warps = launch_shape(n_cols)
    rms_norm_forward_kernel[(triton.cdiv(n_rows, tile_rows),)](
        x, weight.contiguous(), y, rstd, n_rows, n_cols, x.stride(0), y.stride(0), eps, BLOCK=block,
        BLOCK_R=tile_rows, num_warps=warps)
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
    if n_rows == 0:
        return dx, torch.zeros_like(weight)
    programs = min(n_rows, INTERPRETER_BACKWARD_PROGRAMS if INTERPRETED else BACKWARD_PROGRAMS)
    partial = torch.empty(programs, n_cols, dtype=torch.float32, device=x.device)  # every row is written
    rms_norm_backward_tuned[(programs,)](
        grad_y, x, weight.contiguous(), rstd, dx, partial, n_rows, n_cols, grad_y.stride(0), x.stride(0),
        dx.stride(0), BLOCK=triton.next_power_of_2(n_cols))
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
