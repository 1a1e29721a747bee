"""Plain-PyTorch chunk-mask attention: the definition every kernel and backend is checked against.

Mask contract (DESIGN.md): query i sees key j iff doc[i] == doc[j] >= 0 and
(j <= i or (chunk[i] >= 0 and chunk[i] == chunk[j])). Rows that see nothing (padding) return zeros.
"""
from __future__ import annotations

import torch


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor,
                           chunk_ids: torch.Tensor) -> None:
    """Raise one ``ValueError`` naming the offending input when shapes, dtypes or devices do not fit."""
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"q must be [B, Hq, N, D] and k, v [B, Hkv, N, D]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    (batch, hq, n, d), (_, hkv, _, _) = q.shape, k.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (batch, n, d):
        raise ValueError(f"k/v {tuple(k.shape)} must match q {tuple(q.shape)} in batch, length and head dim")
    if hkv == 0:
        raise ValueError(f"k/v {tuple(k.shape)} have no heads; give them at least one (q has {hq})")
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, ids in (("doc_ids", doc_ids), ("chunk_ids", chunk_ids)):
        if tuple(ids.shape) != (batch, n):
            raise ValueError(f"{name} must be [B, N] = {(batch, n)} to match q; got {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers (int32 per the batch contract); got {ids.dtype}")
        if ids.device != q.device:
            raise ValueError(f"{name} is on {ids.device} but q is on {q.device}; move them to one device")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")


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
    check_attention_inputs(q, k, v, doc_ids, chunk_ids)
    hq, hkv = q.shape[1], k.shape[1]
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
