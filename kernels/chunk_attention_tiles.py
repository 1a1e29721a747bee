"""What the chunk-attention kernels share: which partner tiles a tile must visit, and the tile configs.

A tile of rows (queries in the forward and dQ passes, keys in the dK/dV pass) loads its rows' visibility
intervals ``[start, stop)`` (``chunk_attention_bounds``) and reduces them to min/max. Partner tiles outside
``[min start, max stop)`` are invisible to every row and never visited; those inside
``[max start, min stop)`` are visible to every row and run without mask arithmetic (the FlashMask idea,
with row intervals instead of column ones). Only the tiles at the two ends of the range pay for the mask.
"""
from __future__ import annotations

import triton
import triton.language as tl

from jala_kernels.triton_mode import built_for_interpreter


@triton.jit
def visible_tile_range(start_ptr, stop_ptr, offs, n_ctx, BLOCK: tl.constexpr):
    """Partner tiles of size ``BLOCK`` for the rows ``offs``: returns the rows' ``start``/``stop`` and the
    tile-aligned positions ``first <= full_first <= full_stop <= last``. Visit ``[first, full_first)`` and
    ``[full_stop, last)`` with the mask and ``[full_first, full_stop)`` without it."""
    in_range = offs < n_ctx
    start = tl.load(start_ptr + offs, mask=in_range, other=n_ctx)
    stop = tl.load(stop_ptr + offs, mask=in_range, other=0)
    lo = tl.min(start, axis=0)
    hi = tl.max(stop, axis=0)
    first = (lo // BLOCK) * BLOCK
    last = tl.maximum(hi, first)  # rows that see nothing (padding) leave lo > hi: an empty range
    full_first = tl.minimum(tl.maximum(tl.cdiv(tl.max(start, axis=0), BLOCK) * BLOCK, first), last)
    full_stop = tl.minimum(tl.maximum((tl.min(stop, axis=0) // BLOCK) * BLOCK, full_first), last)
    return start, stop, first, full_first, full_stop, last


INTERPRETED = built_for_interpreter(visible_tile_range)
"""Whether the kernels were built for Triton's CPU interpreter (``TRITON_INTERPRET=1`` when first imported)."""


@triton.jit
def load_key_tile(k_base, v_base, stride_kn, stride_vn, n0, n_ctx, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                  MASKED: tl.constexpr):
    """Keys and values of the tile starting at ``n0`` and their positions; only a masked (edge) tile checks
    ``n_ctx``, since the fully visible tiles lie inside the row by construction."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
    if MASKED:
        k = tl.load(k_ptrs, mask=(offs_n < n_ctx)[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=(offs_n < n_ctx)[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v, offs_n


def autotune_bucket(n_ctx: int) -> int:
    """The autotuner's key for a sequence length: the next power of two. Packed batches change length at every
    step; keyed on the exact length, each new one would re-benchmark every config (seconds per kernel)."""
    return triton.next_power_of_2(n_ctx)


def tile_configs(choices: list[tuple[int, int, int, int]],
                 interpreter_blocks: tuple[int, int]) -> list[triton.Config]:
    """Autotune configs from ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` choices for Hopper-class GPUs.

    In the interpreter a single small config: autotuning there would only multiply the (slow) runs, and
    unequal BLOCK_M/BLOCK_N catch a swapped row/column index in the tests.
    """
    if INTERPRETED:
        block_m, block_n = interpreter_blocks
        return [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in choices]

