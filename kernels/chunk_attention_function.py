"""The autograd wiring of the Triton chunk-attention kernels (imports Triton: load it only on the kernel path)."""
from __future__ import annotations

import torch
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from jala_kernels.chunk_attention_backward import chunk_attention_backward
from jala_kernels.chunk_attention_bounds import ChunkBounds
from jala_kernels.chunk_attention_forward import chunk_attention_forward
from jala_kernels.chunk_attention_tiles import INTERPRETED


class ChunkAttentionFunction(torch.autograd.Function):
    """``apply(q, k, v, bounds, scale)``: flash-style forward saving the LSE, recomputing backward."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: ChunkBounds,
                scale: float) -> torch.Tensor:
        _check_triton_mode(q)
        out, lse = chunk_attention_forward(q, k, v, bounds, scale)
        ctx.save_for_backward(q, k, v, out, lse, *bounds)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, lse, *bounds = ctx.saved_tensors
        if grad_out.stride(-1) != 1:
            grad_out = grad_out.contiguous()
        dq, dk, dv = chunk_attention_backward(grad_out, q, k, v, out, lse, ChunkBounds(*bounds), ctx.scale)
        return dq, dk, dv, None, None


def _check_triton_mode(q: torch.Tensor) -> None:
    """Triton builds its own library (``tl.max``, ...) and these kernels for the interpreter or the compiler
    when each is first imported; a mix, or compiled kernels given CPU tensors, fails deep inside Triton."""
    library_interpreted = isinstance(tl.max, InterpretedFunction)
    if library_interpreted != INTERPRETED or (not q.is_cuda and not INTERPRETED):
        raise RuntimeError(
            f"chunk_attention: Triton was imported for the {'interpreter' if library_interpreted else 'GPU'} and "
            f"jala_kernels' kernels for the {'interpreter' if INTERPRETED else 'GPU'}, with {q.device} tensors; "
            "set TRITON_INTERPRET=1 before anything imports triton to run on CPU, and leave it unset on a GPU")
