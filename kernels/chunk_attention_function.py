"""The Triton chunk-attention kernels as a PyTorch custom operator with autograd (imports Triton: load it only on
the kernel path).

A custom operator is one opaque node to ``torch.compile``: a compiled layer (``train.compile_blocks``) keeps the
attention call inside its graph without tracing into the kernel launches (which dynamo cannot follow) and without
a graph break around it; the fake implementations give the output shapes and strides for tracing.

    out, lse = torch.ops.jala_kernels.chunk_attention(q, k, v, *bounds, scale)
"""
from __future__ import annotations

import torch

from jala_kernels.chunk_attention_backward import chunk_attention_backward
from jala_kernels.chunk_attention_bounds import ChunkBounds
from jala_kernels.chunk_attention_forward import chunk_attention_forward
from jala_kernels.chunk_attention_tiles import INTERPRETED
from jala_kernels.triton_mode import check_triton_mode


@torch.library.custom_op("jala_kernels::chunk_attention", mutates_args=())
def chunk_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: torch.Tensor,
                       key_stop: torch.Tensor, query_start: torch.Tensor, query_stop: torch.Tensor,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash-style forward: O (q's shape, dtype and layout) and the fp32 LSE ``[B, Hq, N]`` the backward reads."""
    check_triton_mode("chunk_attention", q, INTERPRETED)
    return chunk_attention_forward(q, k, v, ChunkBounds(key_start, key_stop, query_start, query_stop), scale)


@chunk_attention_op.register_fake
def _(q, k, v, key_start, key_stop, query_start, query_stop, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("jala_kernels::chunk_attention_backward", mutates_args=())
def chunk_attention_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                out: torch.Tensor, lse: torch.Tensor, key_start: torch.Tensor,
                                key_stop: torch.Tensor, query_start: torch.Tensor, query_stop: torch.Tensor,
                                scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV in the shapes, dtypes and layouts of q, k, v, recomputing the attention from the LSE."""
    bounds = ChunkBounds(key_start, key_stop, query_start, query_stop)
    return chunk_attention_backward(grad_out, q, k, v, out, lse, bounds, scale)


@chunk_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, key_start, key_stop, query_start, query_stop, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    q, k, v, *bounds, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *bounds)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out: torch.Tensor, grad_lse: torch.Tensor | None) -> tuple:
    q, k, v, out, lse, *bounds = ctx.saved_tensors
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    dq, dk, dv = chunk_attention_backward_op(grad_out, q, k, v, out, lse, *bounds, ctx.scale)
    return dq, dk, dv, None, None, None, None, None


chunk_attention_op.register_autograd(_backward, setup_context=_setup_context)
