"""``chunk_attention``: the chunk-mask attention every JALA backbone layer calls, and where it runs.

    out = chunk_attention(q, k, v, batch["doc_ids"], batch["chunk_ids"])   # [B, Hq, N, D]

CUDA tensors run the Triton kernels (``chunk_attention_forward.py``, ``chunk_attention_backward.py``); CPU
tensors run ``chunk_attention_reference`` unless ``TRITON_INTERPRET=1`` is set, in which case the same
Triton kernels run in Triton's interpreter (how the tests check them without a GPU). The variable is read at
call time, but Triton decides between compiling and interpreting when it is first imported, and again when
the kernels' module is (lazily, on the first kernel call): it must be set before either, as
``tests/conftest.py`` does for Triton on machines without a GPU.

The Triton path never builds an N x N mask: the mask becomes O(N) intervals (``chunk_attention_bounds``),
computed once per batch: consecutive calls with the same, unmodified ``doc_ids``/``chunk_ids`` tensors (every
layer of one step) reuse them. Its backward is deterministic.
"""
from __future__ import annotations

import torch

from jala_kernels.chunk_attention_bounds import ChunkBounds, chunk_attention_bounds
from jala_kernels.chunk_attention_reference import check_attention_inputs, chunk_attention_reference
from jala_kernels.dispatch import KERNEL_DTYPES, runs_triton

KERNEL_HEAD_DIMS = (16, 32, 64, 128, 256)
FLOAT32_MAX_HEAD_DIM = 128
"""Widest float32 heads: at 256 every forward and dQ tile config needs more shared memory than an H100 block has
(the smallest forward tile takes 224 KiB of the 227 in bf16, twice that in fp32; ``chunk_attention_resources``),
so the launch would fail in the autotuner."""


def chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor,
                    chunk_ids: torch.Tensor, scale: float | None = None,
                    bounds: ChunkBounds | None = None) -> torch.Tensor:
    """Chunk-mask attention (DESIGN.md contract): q ``[B, Hq, N, D]``, k/v ``[B, Hkv, N, D]`` (Hq a multiple
    of Hkv), doc_ids/chunk_ids int ``[B, N]`` -> ``[B, Hq, N, D]``; rows whose doc is -1 return zeros.

    Differentiable in q, k, v. Every document, and every chunk within a document, must be one contiguous run
    of positions (``ValueError`` otherwise, on every device, so a bad layout shows up in CPU tests too).
    ``bounds``: ``chunk_attention_bounds(doc_ids, chunk_ids)`` computed beforehand, on any device (a data
    loader can, on the host): the kernels then read them as given, and no call waits on the layout check.
    """
    check_attention_inputs(q, k, v, doc_ids, chunk_ids)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if bounds is None:
        bounds = torch.ops.jala_kernels.chunk_bounds(doc_ids, chunk_ids)
    else:
        _check_bounds(bounds, doc_ids, q.device)
        # the kernels index each bound as a row-major [B, N] array: a strided view (a slice along N, a
        # per-token [B, N, 4] layout unbound) would be read from the wrong places
        bounds = ChunkBounds(*(bound.contiguous() for bound in bounds))
    if not runs_triton(q):
        return chunk_attention_reference(q, k, v, doc_ids, chunk_ids, scale)
    _check_kernel_inputs(q)
    import jala_kernels.chunk_attention_function  # noqa: F401  registers torch.ops.jala_kernels.chunk_attention

    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return torch.ops.jala_kernels.chunk_attention(q, k, v, *bounds, scale)[0]


def _check_bounds(bounds: ChunkBounds, doc_ids: torch.Tensor, device: torch.device) -> None:
    for name, bound in zip(ChunkBounds._fields, bounds):
        if bound.shape != doc_ids.shape or bound.dtype != torch.int32 or bound.device != device:
            raise ValueError(f"chunk_attention: bounds.{name} is {bound.dtype} {tuple(bound.shape)} on {bound.device}; "
                             f"it must be int32 {tuple(doc_ids.shape)} on {device}, as chunk_attention_bounds(doc_ids, "
                             "chunk_ids) returns it moved to q's device")


def _check_kernel_inputs(q: torch.Tensor) -> None:
    if q.dtype not in KERNEL_DTYPES:
        raise ValueError(f"chunk_attention: the Triton kernel takes float16, bfloat16 or float32 q/k/v, got "
                         f"{q.dtype}; cast them, or call chunk_attention_reference")
    if q.shape[-1] not in KERNEL_HEAD_DIMS:
        raise ValueError(f"chunk_attention: head dim {q.shape[-1]} is not supported by the Triton kernel; use one "
                         f"of {KERNEL_HEAD_DIMS} (pad the heads with zeros and pass scale= for the true size)")
    if q.dtype == torch.float32 and q.shape[-1] > FLOAT32_MAX_HEAD_DIM:
        raise ValueError(f"chunk_attention: float32 q/k/v of head dim {q.shape[-1]} do not fit the Triton kernel's "
                         f"shared memory (float32 goes up to {FLOAT32_MAX_HEAD_DIM}); cast them to bfloat16 or "
                         "float16, or call chunk_attention_reference")


_last_bounds: tuple[torch.Tensor, torch.Tensor, int, int, ChunkBounds] | None = None


@torch.library.custom_op("jala_kernels::chunk_bounds", mutates_args=())
def chunk_bounds_op(doc_ids: torch.Tensor, chunk_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor, torch.Tensor]:
    """``ChunkBounds`` of the ids as an operator ``torch.compile`` does not look into: computing them checks the
    layout on the host, which a compiled graph would have to break around, in every layer."""
    return tuple(_cached_bounds(doc_ids, chunk_ids))


@chunk_bounds_op.register_fake
def _(doc_ids, chunk_ids):
    return tuple(doc_ids.new_empty(doc_ids.shape, dtype=torch.int32) for _ in ChunkBounds._fields)


def _cached_bounds(doc_ids: torch.Tensor, chunk_ids: torch.Tensor) -> ChunkBounds:
    """``chunk_attention_bounds``, reused while the same tensors come back unmodified.

    Holding the tensors themselves (not their addresses) keeps their memory from being reused by another
    batch; ``_version`` changes on any in-place write through torch. Writes torch does not see (through a numpy
    array or DLPack sharing the memory) do not change it: a caller that refills id buffers that way must pass
    ``bounds``. Inference-mode tensors have no version: no cache.
    """
    global _last_bounds
    if doc_ids.is_inference() or chunk_ids.is_inference():
        return chunk_attention_bounds(doc_ids, chunk_ids)
    last = _last_bounds
    if (last is not None and last[0] is doc_ids and last[1] is chunk_ids and last[2] == doc_ids._version
            and last[3] == chunk_ids._version):
        return last[4]
    bounds = chunk_attention_bounds(doc_ids, chunk_ids)
    _last_bounds = (doc_ids, chunk_ids, doc_ids._version, chunk_ids._version, bounds)
    return bounds
