"""The Triton chunk-attention kernels as a PyTorch custom operator with autograd (imports Triton: load it only on
the kernel path).

A custom operator is one opaque node to ``torch.compile``: a compiled layer (``train.compile_blocks``) keeps the
attention call inside its graph without tracing into the kernel launches (which dynamo cannot follow) and without
a graph break around it; the fake implementations give the output shapes and strides for tracing.

    out, lse = torch.ops.jala_kernels.chunk_attention(q, k, v, *bounds, scale)
"""
from __future__ import annotations

import torch
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from jala_kernels.chunk_attention_backward import chunk_attention_backward
from jala_kernels.chunk_attention_bounds import ChunkBounds
from jala_kernels.chunk_attention_forward import chunk_attention_forward
from jala_kernels.chunk_attention_tiles import INTERPRETED


@torch.library.custom_op("jala_kernels::chunk_attention", mutates_args=())
def chunk_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: torch.Tensor,
                       key_stop: torch.Tensor, query_start: torch.Tensor, query_stop: torch.Tensor,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash-style forward: O (q's shape, dtype and layout) and the fp32 LSE ``[B, Hq, N]`` the backward reads."""
    _check_triton_mode(q)
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


def _check_triton_mode(q: torch.Tensor) -> None:
    """Triton builds its own library (``tl.max``, ...) and these kernels for the interpreter or the compiler
    when each is first imported; a mix, or compiled kernels given CPU tensors, fails deep inside Triton."""
    library_interpreted = isinstance(tl.max, InterpretedFunction)
    if library_interpreted != INTERPRETED or (not q.is_cuda and not INTERPRETED):
        raise RuntimeError(
            f"chunk_attention: Triton was imported for the {'interpreter' if library_interpreted else 'GPU'} and "
            f"jala_kernels' kernels for the {'interpreter' if INTERPRETED else 'GPU'}, with {q.device} tensors; "
            "set TRITON_INTERPRET=1 before anything imports triton to run on CPU, and leave it unset on a GPU")
