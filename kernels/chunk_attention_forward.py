"""Forward Triton kernel of the chunk-mask attention: flash attention with an online softmax over the
visible key tiles of each query tile; saves the log-sum-exp (base 2) for the backward pass.

One program per (query tile, batch x query head). Scores accumulate in fp32 whatever the input dtype;
probabilities are cast to the value dtype for the P @ V product, as flash attention does.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from jala_kernels.chunk_attention_bounds import ChunkBounds
from jala_kernels.chunk_attention_tiles import autotune_bucket, load_key_tile, tile_configs, visible_tile_range
from jala_kernels.dispatch import dot_precision

FORWARD_CONFIGS = tile_configs(
    # (BLOCK_M, BLOCK_N, warps, stages) that compile for sm_90 without register spills at head dims 64 and 128
    # (``python -m jala_kernels.chunk_attention_resources``); 128 x 128 x 3 stages uses 224 of the 227 KiB.
    [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3), (64, 64, 4, 4),
     (64, 128, 4, 3), (64, 64, 8, 3)],
    interpreter_blocks=(32, 16))


@triton.jit
def _attend_key_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, key_start, key_stop,
                      tile_lo, tile_hi, n_ctx, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                      MASKED: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Online-softmax update of one query tile with the key tiles starting in ``[tile_lo, tile_hi)``."""
    for n0 in range(tile_lo, tile_hi, BLOCK_N):
        k, v, offs_n = load_key_tile(k_base, v_base, stride_kn, stride_vn, n0, n_ctx, HEAD_DIM, BLOCK_N, MASKED)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        if MASKED:
            visible = (offs_n[None, :] >= key_start[:, None]) & (offs_n[None, :] < key_stop[:, None])
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            # A row that has seen nothing yet keeps m = -inf; shifting by 0 instead avoids -inf - -inf.
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            shift = m_new
        p = tl.math.exp2(s - shift[:, None])
        alpha = tl.math.exp2(m_i - shift)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=FORWARD_CONFIGS, key=["N_BUCKET", "HEAD_DIM", "GROUP"])
@triton.jit
def chunk_attention_forward_kernel(Q, K, V, O, LSE, KEY_START, KEY_STOP,
                                   stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                                   stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                                   qk_scale, N_CTX, H_Q, N_BUCKET,
                                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """O and LSE of one query tile; LSE is ``[B, H_Q, N]``, +inf where nothing is seen."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_Q).to(tl.int64)
    h = (pid_bh % H_Q).to(tl.int64)
    h_kv = h // GROUP
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_in_range = offs_m < N_CTX

    q_offsets = b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(Q + q_offsets, mask=row_in_range[:, None], other=0.0)
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    key_start, key_stop, first, full_first, full_stop, last = visible_tile_range(
        KEY_START + b * N_CTX, KEY_STOP + b * N_CTX, offs_m, N_CTX, BLOCK_N)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    acc, l_i, m_i = _attend_key_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, key_start, key_stop,
                                      first, full_first, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, True,
                                      INPUT_PRECISION)
    acc, l_i, m_i = _attend_key_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, key_start, key_stop,
                                      full_first, full_stop, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, False,
                                      INPUT_PRECISION)
    acc, l_i, m_i = _attend_key_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, key_start, key_stop,
                                      full_stop, last, N_CTX, qk_scale, HEAD_DIM, BLOCK_N, True,
                                      INPUT_PRECISION)

    seen = l_i > 0.0
    # Rows that see no key (padding) output zeros, and an LSE of +inf makes their backward probabilities 0.
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    o_offsets = b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(O + o_offsets, out.to(O.dtype.element_ty), mask=row_in_range[:, None])
    lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    tl.store(LSE + pid_bh.to(tl.int64) * N_CTX + offs_m, lse, mask=row_in_range)


def chunk_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: ChunkBounds,
                            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: returns O (q's shape and dtype) and the fp32 LSE ``[B, Hq, N]``.

    Every tensor may be strided (heads-major views of ``[B, N, H, D]`` included) as long as its last dim is
    contiguous; O keeps q's memory layout when q is dense.
    """
    batch, heads_q, n_ctx, head_dim = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads_q, n_ctx), device=q.device, dtype=torch.float32)

    def grid(meta):
        return triton.cdiv(n_ctx, meta["BLOCK_M"]), batch * heads_q

    chunk_attention_forward_kernel[grid](
        q, k, v, out, lse, bounds.key_start, bounds.key_stop,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        scale * math.log2(math.e), n_ctx, heads_q, autotune_bucket(n_ctx),
        GROUP=heads_q // k.shape[1], HEAD_DIM=head_dim, INPUT_PRECISION=dot_precision(q.dtype))
    return out, lse
