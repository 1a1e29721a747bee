"""Plain-PyTorch chunk-mask attention: the definition every kernel and backend is checked against.

Mask contract (DESIGN.md): query i sees key j iff doc[i] == doc[j] >= 0 and
(j <= i or (chunk[i] >= 0 and chunk[i] == chunk[j])). Rows that see nothing (padding) return zeros.
"""
from __future__ import annotations

import torch


def chunk_mask(doc_ids: torch.Tensor, chunk_ids: torch.Tensor) -> torch.Tensor:
    """Dense boolean mask ``[B, N, N]`` (True = attend) from ``doc_ids``/``chunk_ids`` ``[B, N]``."""
    n = doc_ids.shape[-1]
    pos = torch.arange(n, device=doc_ids.device)
    causal = pos[None, :, None] >= pos[None, None, :]
    same_doc = (doc_ids[:, :, None] == doc_ids[:, None, :]) & (doc_ids[:, :, None] >= 0)
    same_chunk = (chunk_ids[:, :, None] == chunk_ids[:, None, :]) & (chunk_ids[:, :, None] >= 0)
    return same_doc & (causal | same_chunk)


def chunk_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor,
                              chunk_ids: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """q ``[B, Hq, N, D]``, k/v ``[B, Hkv, N, D]`` (Hq a multiple of Hkv) -> ``[B, Hq, N, D]``.

    Computes in the inputs' dtype (the flash-attention test rule compares a kernel's error with this
    function's error in the same dtype); differentiable in q, k, v.
    """
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    mask = chunk_mask(doc_ids, chunk_ids)[:, None]
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    # A row with no visible key would be all -inf: softmax gives NaN there, so give it zeros instead.
    visible = mask.any(dim=-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~visible, 0.0), dim=-1) * visible
    return probs @ v
