"""Backward Triton kernels of the chunk-mask attention, deterministic (no atomics anywhere).

Three launches, flash-attention-2 style, recomputing the probabilities from the saved LSE:
1. ``delta = rowsum(dO * O)`` per query row;
2. dK and dV: one program per (key tile, batch x KV head) loops over the query heads of its GQA group and
   over the query tiles that see the key tile, accumulating in registers: each dK/dV element has one writer;
3. dQ: one program per (query tile, batch x query head) loops over the visible key tiles.
Tiles are chosen from the bounds as in the forward pass (``visible_tile_range``).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from jala_kernels.chunk_attention_bounds import ChunkBounds
from jala_kernels.chunk_attention_tiles import (
    INTERPRETED,
    autotune_bucket,
    load_key_tile,
    tile_configs,
    visible_tile_range,
)
from jala_kernels.dispatch import dot_precision

# Chosen as the forward's: at head dim 128 every dK/dV tile spills some registers on sm_90 (dK and dV
# accumulate in registers next to K and V); these spill least (under 256 bytes per thread).
DKDV_CONFIGS = tile_configs(
    [(16, 128, 8, 3), (32, 128, 8, 3), (16, 64, 4, 3), (32, 64, 8, 2), (32, 64, 8, 3), (64, 64, 8, 2)],
    interpreter_blocks=(16, 32))
DQ_CONFIGS = tile_configs(
    [(128, 32, 8, 2), (128, 32, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (64, 64, 8, 3)],
    interpreter_blocks=(32, 16))
DELTA_BLOCK = 32 if INTERPRETED else 128


@triton.jit
def _delta_kernel(O, DO, DELTA, stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don, N_CTX, H_Q,
                  HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """``DELTA[b, h, i] = sum_d dO * O`` in fp32, the softmax backward's per-row correction."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_Q).to(tl.int64)
    h = (pid_bh % H_Q).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = (offs_m < N_CTX)[:, None]
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :], mask=rows, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :], mask=rows,
                 other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + pid_bh.to(tl.int64) * N_CTX + offs_m, delta, mask=offs_m < N_CTX)


@triton.jit
def _dkdv_query_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don, query_start,
                      query_stop, tile_lo, tile_hi, n_ctx, qk_scale, HEAD_DIM: tl.constexpr,
                      BLOCK_M: tl.constexpr, MASKED: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Add to one key tile's dK/dV (transposed scores: rows are keys) the query tiles in ``[tile_lo, tile_hi)``."""
    offs_d = tl.arange(0, HEAD_DIM)
    for m0 in range(tile_lo, tile_hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q_ptrs = q_base + offs_m[:, None] * stride_qn + offs_d[None, :]
        do_ptrs = do_base + offs_m[:, None] * stride_don + offs_d[None, :]
        if MASKED:
            rows = offs_m < n_ctx
            q = tl.load(q_ptrs, mask=rows[:, None], other=0.0)
            do = tl.load(do_ptrs, mask=rows[:, None], other=0.0)
            lse = tl.load(lse_base + offs_m, mask=rows, other=float("inf"))
            delta = tl.load(delta_base + offs_m, mask=rows, other=0.0)
        else:
            q = tl.load(q_ptrs)
            do = tl.load(do_ptrs)
            lse = tl.load(lse_base + offs_m)
            delta = tl.load(delta_base + offs_m)
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION) * qk_scale - lse[None, :])
        if MASKED:
            visible = (offs_m[None, :] >= query_start[:, None]) & (offs_m[None, :] < query_stop[:, None])
            p_t = tl.where(visible, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=INPUT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=INPUT_PRECISION)
    return dk, dv


@triton.autotune(configs=DKDV_CONFIGS, key=["N_BUCKET", "HEAD_DIM", "GROUP"])
@triton.jit
def chunk_attention_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, QUERY_START, QUERY_STOP,
                                stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                                stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                                stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                                scale, qk_scale, N_CTX, H_KV, N_BUCKET, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                                INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK and dV of one key tile of one KV head, summed over the GROUP query heads that share it."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_KV).to(tl.int64)
    h_kv = (pid_bh % H_KV).to(tl.int64)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    cols = (offs_n < N_CTX)[:, None]
    k = tl.load(K + b * stride_kb + h_kv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :], mask=cols,
                other=0.0)
    v = tl.load(V + b * stride_vb + h_kv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :], mask=cols,
                other=0.0)
    query_start, query_stop, first, full_first, full_stop, last = visible_tile_range(
        QUERY_START + b * N_CTX, QUERY_STOP + b * N_CTX, offs_n, N_CTX, BLOCK_M)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for g in range(GROUP):
        h = h_kv * GROUP + g
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        row_base = (b * H_KV * GROUP + h) * N_CTX
        dk, dv = _dkdv_query_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qn,
                                   stride_don, query_start, query_stop, first, full_first, N_CTX, qk_scale,
                                   HEAD_DIM, BLOCK_M, True, INPUT_PRECISION)
        dk, dv = _dkdv_query_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qn,
                                   stride_don, query_start, query_stop, full_first, full_stop, N_CTX,
                                   qk_scale, HEAD_DIM, BLOCK_M, False, INPUT_PRECISION)
        dk, dv = _dkdv_query_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qn,
                                   stride_don, query_start, query_stop, full_stop, last, N_CTX, qk_scale,
                                   HEAD_DIM, BLOCK_M, True, INPUT_PRECISION)

    dk_offsets = b * stride_dkb + h_kv * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
    dv_offsets = b * stride_dvb + h_kv * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :]
    tl.store(DK + dk_offsets, (dk * scale).to(DK.dtype.element_ty), mask=cols)
    tl.store(DV + dv_offsets, dv.to(DV.dtype.element_ty), mask=cols)


@triton.jit
def _dq_key_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, key_start, key_stop, tile_lo,
                  tile_hi, n_ctx, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                  INPUT_PRECISION: tl.constexpr):
    """Add to one query tile's dQ the key tiles in ``[tile_lo, tile_hi)``."""
    for n0 in range(tile_lo, tile_hi, BLOCK_N):
        k, v, offs_n = load_key_tile(k_base, v_base, stride_kn, stride_vn, n0, n_ctx, HEAD_DIM, BLOCK_N, MASKED)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale - lse[:, None])
        if MASKED:
            visible = (offs_n[None, :] >= key_start[:, None]) & (offs_n[None, :] < key_stop[:, None])
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=INPUT_PRECISION)
    return dq


@triton.autotune(configs=DQ_CONFIGS, key=["N_BUCKET", "HEAD_DIM", "GROUP"])
@triton.jit
def chunk_attention_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, KEY_START, KEY_STOP,
                              stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                              stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                              stride_dqb, stride_dqh, stride_dqn, scale, qk_scale, N_CTX, H_Q, N_BUCKET,
                              GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of one query tile of one query head."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_Q).to(tl.int64)
    h = (pid_bh % H_Q).to(tl.int64)
    h_kv = h // GROUP
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m < N_CTX
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :],
                mask=rows[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :],
                 mask=rows[:, None], other=0.0)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * N_CTX + offs_m, mask=rows, other=float("inf"))
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * N_CTX + offs_m, mask=rows, other=0.0)
    key_start, key_stop, first, full_first, full_stop, last = visible_tile_range(
        KEY_START + b * N_CTX, KEY_STOP + b * N_CTX, offs_m, N_CTX, BLOCK_N)
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _dq_key_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, key_start, key_stop, first,
                       full_first, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, True, INPUT_PRECISION)
    dq = _dq_key_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, key_start, key_stop,
                       full_first, full_stop, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, False, INPUT_PRECISION)
    dq = _dq_key_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, key_start, key_stop,
                       full_stop, last, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, True, INPUT_PRECISION)
    dq_offsets = b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :]
    tl.store(DQ + dq_offsets, (dq * scale).to(DQ.dtype.element_ty), mask=rows[:, None])


def chunk_attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                             lse: torch.Tensor, bounds: ChunkBounds,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the three backward kernels: returns dQ, dK, dV in the shapes and dtypes of q, k, v."""
    batch, heads_q, n_ctx, head_dim = q.shape
    heads_kv = k.shape[1]
    group, precision, qk_scale = heads_q // heads_kv, dot_precision(q.dtype), scale * math.log2(math.e)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)
    strides = [t.stride(i) for t in (q, k, v, do) for i in range(3)]

    _delta_kernel[(triton.cdiv(n_ctx, DELTA_BLOCK), batch * heads_q)](
        out, do, delta, out.stride(0), out.stride(1), out.stride(2), do.stride(0), do.stride(1), do.stride(2),
        n_ctx, heads_q, HEAD_DIM=head_dim, BLOCK=DELTA_BLOCK)

    def dkdv_grid(meta):
        return triton.cdiv(n_ctx, meta["BLOCK_N"]), batch * heads_kv

    chunk_attention_dkdv_kernel[dkdv_grid](
        q, k, v, do, dk, dv, lse, delta, bounds.query_start, bounds.query_stop, *strides,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        scale, qk_scale, n_ctx, heads_kv, autotune_bucket(n_ctx), GROUP=group, HEAD_DIM=head_dim,
        INPUT_PRECISION=precision)

    def dq_grid(meta):
        return triton.cdiv(n_ctx, meta["BLOCK_M"]), batch * heads_q

    chunk_attention_dq_kernel[dq_grid](
        q, k, v, do, dq, lse, delta, bounds.key_start, bounds.key_stop, *strides,
        dq.stride(0), dq.stride(1), dq.stride(2), scale, qk_scale, n_ctx, heads_q, autotune_bucket(n_ctx),
        GROUP=group, HEAD_DIM=head_dim, INPUT_PRECISION=precision)
    return dq, dk, dv
