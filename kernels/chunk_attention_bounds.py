"""The chunk mask as intervals: O(N) per-query and per-key bounds that replace the dense N x N mask.

Mask contract (DESIGN.md): query i sees key j iff doc[i] == doc[j] >= 0 and
(j <= i or (chunk[i] >= 0 and chunk[i] == chunk[j])).

When every document is one contiguous run of positions, and every chunk is one contiguous run within its
document, each query sees exactly one interval of keys:

    keys of query i   = [doc_start(i), max(i + 1, chunk_stop(i)))      (chunk_stop only when chunk[i] >= 0)
    queries of key j  = [min(j, chunk_start(j)), doc_stop(j))          (chunk_start only when chunk[j] >= 0)

because the doc's causal prefix [doc_start, i] and i's own chunk [chunk_start, chunk_stop) overlap at i.
Padding positions (doc = -1) get the empty interval [N, 0), which neither widens a tile's range nor makes a
tile fully visible. The kernels read these bounds per tile (min/max) to skip invisible tiles and to drop the
mask arithmetic on fully visible ones; ``tests/test_chunk_attention_bounds.py`` checks them against the
dense mask. Packed rows from ``jala_ds.data.collate`` have this layout; any other layout is refused with one
error, since the intervals would silently be wrong for it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class ChunkBounds(NamedTuple):
    """Half-open visibility intervals, int32 ``[B, N]`` each; an empty interval has start >= stop."""

    key_start: torch.Tensor
    """Query i sees the keys ``[key_start[i], key_stop[i])``."""
    key_stop: torch.Tensor
    query_start: torch.Tensor
    """Key j is seen by the queries ``[query_start[j], query_stop[j])``."""
    query_stop: torch.Tensor


def chunk_attention_bounds(doc_ids: torch.Tensor, chunk_ids: torch.Tensor) -> ChunkBounds:
    """O(N) visibility intervals of the chunk mask for ``doc_ids``/``chunk_ids`` int ``[B, N]``.

    Raises ``ValueError`` when a document, or a chunk within a document, is split into several runs of
    positions (the one layout the intervals cannot express). Costs one host sync, for that check.
    """
    if doc_ids.dim() != 2 or doc_ids.shape != chunk_ids.shape:
        raise ValueError(f"doc_ids and chunk_ids must both be [B, N]; got {tuple(doc_ids.shape)} and "
                         f"{tuple(chunk_ids.shape)}")
    doc, chunk = doc_ids.long(), chunk_ids.long()
    n = doc.shape[-1]
    pos = torch.arange(n, device=doc.device).expand_as(doc)
    doc_begins = _run_begins(doc)
    chunk_begins = doc_begins | _run_begins(chunk)  # a chunk run also ends where its document does
    _refuse_split_runs(doc, chunk, doc_begins, chunk_begins)

    doc_start, doc_stop = _run_edges(doc_begins)
    chunk_start, chunk_stop = _run_edges(chunk_begins)
    in_doc, in_chunk = doc >= 0, chunk >= 0
    key_start = torch.where(in_doc, doc_start, n)
    key_stop = torch.where(in_doc, torch.where(in_chunk, torch.maximum(pos + 1, chunk_stop), pos + 1), 0)
    query_start = torch.where(in_doc, torch.where(in_chunk, chunk_start, pos), n)
    query_stop = torch.where(in_doc, doc_stop, 0)
    return ChunkBounds(*(bound.to(torch.int32).contiguous()
                         for bound in (key_start, key_stop, query_start, query_stop)))


def visible_pairs(bounds: ChunkBounds) -> int:
    """Number of (query, key) pairs the mask lets through, summed over the batch: the useful work."""
    return int((bounds.key_stop.long() - bounds.key_start.long()).clamp_min(0).sum())


def _run_begins(ids: torch.Tensor) -> torch.Tensor:
    """True where a run of equal ids begins (position 0 always begins one)."""
    begins = torch.ones_like(ids, dtype=torch.bool)
    begins[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return begins


def _run_edges(begins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and (exclusive) stop of the run every position belongs to, from the run-begin flags."""
    n = begins.shape[-1]
    pos = torch.arange(n, device=begins.device).expand(begins.shape)
    start = torch.cummax(torch.where(begins, pos, 0), dim=-1).values
    ends = torch.ones_like(begins)
    ends[:, :-1] = begins[:, 1:]
    # The stop is the nearest run end at or after each position: a running minimum taken from the right.
    stop = torch.cummin(torch.where(ends, pos + 1, n).flip(-1), dim=-1).values.flip(-1)
    return start, stop


def _refuse_split_runs(doc: torch.Tensor, chunk: torch.Tensor, doc_begins: torch.Tensor,
                       chunk_begins: torch.Tensor) -> None:
    """Raise when a document id, or a (document, chunk) pair, begins more than one run in a row."""
    # Chunk ids are non-negative when they matter; the pair key keeps chunks of different docs apart.
    chunk_key = doc * 2**32 + chunk
    split = _repeats(torch.where(doc_begins & (doc >= 0), doc, -1)) | _repeats(
        torch.where(chunk_begins & (doc >= 0) & (chunk >= 0), chunk_key, -1))
    if bool(split.any()):
        row = int(split.nonzero()[0, 0])
        raise ValueError(
            f"doc_ids/chunk_ids row {row}: a document, or a chunk within a document, is split into several "
            "runs of positions; chunk_attention needs each document's tokens together and each chunk's tokens "
            "together (pack documents back to back and give every chunk its own id)")


def _repeats(run_ids: torch.Tensor) -> torch.Tensor:
    """Per row: does any id other than -1 occur twice? (sorting puts equal ids side by side)"""
    ordered = run_ids.sort(dim=-1).values
    return ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(dim=-1)
