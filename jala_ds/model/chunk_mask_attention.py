"""The chunk-mask attention of the language model, plugged into transformers' ``AttentionInterface``.

Mask contract (docs/architecture.md): query i sees key j iff doc[i] == doc[j] >= 0 and
(j <= i or (chunk[i] >= 0 and chunk[i] == chunk[j])). Rows of padding (doc -1) return zeros.

Each backend is registered under its own name and selected per sub-model, so only the language model uses it
and the vision tower keeps its own full attention:

    register_chunk_attention()
    backbone.set_attn_implementation({"text_config": attention_implementation("flex")})
    mask = prepare_chunk_mask("flex", doc_ids, chunk_ids)          # once per batch, shared by every layer
    backbone.model.language_model(inputs_embeds=x, attention_mask=mask, doc_ids=doc_ids, chunk_ids=chunk_ids)

``doc_ids``/``chunk_ids`` (and the batch's ``chunk_bounds``, for triton) travel through the forward kwargs down to
every attention call. The prepared mask is
4-D (dense ``[B, 1, N, N]`` or a ``BlockMask``), which transformers passes through untouched; without it each
layer builds the mask itself from the ids.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from transformers import AttentionInterface

import jala_kernels
from jala_kernels import chunk_mask

IMPLEMENTATIONS = {"reference": "jala_chunk_reference", "flex": "jala_chunk_flex", "triton": "jala_chunk_triton"}
"""transformers attention-implementation name of each ``model.attention`` backend."""


def attention_implementation(backend: str) -> str:
    """The name under which ``backend`` is registered in transformers' ``AttentionInterface``."""
    return IMPLEMENTATIONS[backend]


def prepare_chunk_mask(backend: str, doc_ids: torch.Tensor, chunk_ids: torch.Tensor) -> torch.Tensor | BlockMask | None:
    """The per-batch mask ``backend`` reads (None for triton, whose kernel reads the ids directly)."""
    if backend == "reference":
        return dense_chunk_mask(doc_ids, chunk_ids)
    if backend == "flex":
        return chunk_block_mask(doc_ids, chunk_ids)
    return None


def dense_chunk_mask(doc_ids: torch.Tensor, chunk_ids: torch.Tensor) -> torch.Tensor:
    """``[B, 1, N, N]`` bool mask of the contract, except that padding rows see themselves.

    A row that sees nothing makes some SDPA kernels return NaN; the diagonal keeps it finite and the
    attention output of padding rows is zeroed afterwards, as the contract says.
    """
    mask = chunk_mask(doc_ids, chunk_ids)
    padding = doc_ids < 0
    eye = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    return (mask | (eye & padding[:, :, None]))[:, None]


def chunk_block_mask(doc_ids: torch.Tensor, chunk_ids: torch.Tensor) -> BlockMask:
    """FlexAttention ``BlockMask`` of the contract; rows that see nothing come out as zeros in flex_attention."""
    batch, n = doc_ids.shape

    def visible(b, h, q, kv):
        same_doc = (doc_ids[b, q] == doc_ids[b, kv]) & (doc_ids[b, q] >= 0)
        same_chunk = (chunk_ids[b, q] == chunk_ids[b, kv]) & (chunk_ids[b, q] >= 0)
        return same_doc & ((kv <= q) | same_chunk)

    return create_block_mask(visible, B=batch, H=None, Q_LEN=n, KV_LEN=n, device=doc_ids.device,
                             _compile=doc_ids.is_cuda)


def _check_call(module: torch.nn.Module, dropout: float, sliding_window: int | None,
                doc_ids: torch.Tensor | None, chunk_ids: torch.Tensor | None) -> None:
    if doc_ids is None or chunk_ids is None:
        raise ValueError("chunk-mask attention needs doc_ids and chunk_ids [B, N] in the forward kwargs: "
                         "pass them to the language model's forward (JalaModel does)")
    if dropout or sliding_window is not None:
        raise ValueError(f"{type(module).__name__}: the chunk-mask backends support neither attention dropout "
                         f"({dropout}) nor sliding windows ({sliding_window}): set text_config.attention_dropout=0 "
                         "and use_sliding_window=false")


def reference_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        sliding_window: int | None = None, doc_ids: torch.Tensor | None = None,
                        chunk_ids: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """SDPA with the dense mask; works on any device. Returns ``[B, N, Hq, D]`` as transformers expects."""
    _check_call(module, dropout, sliding_window, doc_ids, chunk_ids)
    mask = attention_mask if attention_mask is not None else dense_chunk_mask(doc_ids, chunk_ids)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
    out = out * (doc_ids >= 0)[:, None, :, None].to(out.dtype)
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def _compiled_flex() -> Callable:
    # Without torch.compile flex_attention materialises the full score matrix; compiled once per process.
    return torch.compile(flex_attention)


def flex_chunk_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: BlockMask | None, scaling: float | None = None, dropout: float = 0.0,
                         sliding_window: int | None = None, doc_ids: torch.Tensor | None = None,
                         chunk_ids: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """FlexAttention with the per-batch ``BlockMask``: compiled on GPU; eager (forward only) on CPU."""
    _check_call(module, dropout, sliding_window, doc_ids, chunk_ids)
    block_mask = attention_mask if attention_mask is not None else chunk_block_mask(doc_ids, chunk_ids)
    attend = _compiled_flex() if query.is_cuda else flex_attention
    out = attend(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def triton_chunk_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: None, scaling: float | None = None, dropout: float = 0.0,
                           sliding_window: int | None = None, doc_ids: torch.Tensor | None = None,
                           chunk_ids: torch.Tensor | None = None, chunk_bounds: torch.Tensor | None = None,
                           **kwargs) -> tuple[torch.Tensor, None]:
    """``jala_kernels.chunk_attention``: reads the ids itself and handles GQA without repeating K/V. The batch's
    ``chunk_bounds`` (``[4, B, N]``, found by the collate on the host) spare it finding them on the device."""
    _check_call(module, dropout, sliding_window, doc_ids, chunk_ids)
    bounds = None if chunk_bounds is None else jala_kernels.ChunkBounds(*chunk_bounds)
    out = jala_kernels.chunk_attention(query, key, value, doc_ids, chunk_ids, scale=scaling, bounds=bounds)
    return out.transpose(1, 2).contiguous(), None


def register_chunk_attention() -> None:
    """Register the three backends in transformers' global ``AttentionInterface`` (idempotent)."""
    functions = {"reference": reference_attention, "flex": flex_chunk_attention, "triton": triton_chunk_attention}
    for backend, function in functions.items():
        AttentionInterface.register(IMPLEMENTATIONS[backend], function)
