"""doc_ids/chunk_ids layouts for the chunk-attention tests: built by hand from a description, or drawn at random.

    doc_ids, chunk_ids = packed_rows(64, [[(40, [(0, 40)])]])   # one 40-token document, one chunk over all of
                                                                # it, then 24 tokens of padding
"""
from __future__ import annotations

import random

import torch

Doc = tuple[int, list[tuple[int, int]]]
"""A document: its length and its chunks as (offset within the document, length)."""


def packed_rows(n: int, rows: list[list[Doc]]) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 ``[B, N]`` ids of rows packed left to right from ``rows`` and padded with -1 to ``n``."""
    doc_ids = torch.full((len(rows), n), -1, dtype=torch.int32)
    chunk_ids = torch.full((len(rows), n), -1, dtype=torch.int32)
    for r, docs in enumerate(rows):
        pos, chunk = 0, 0
        for d, (length, chunks) in enumerate(docs):
            doc_ids[r, pos:pos + length] = d
            for offset, size in chunks:
                assert 0 <= offset and offset + size <= length, "a chunk must lie inside its document"
                chunk_ids[r, pos + offset:pos + offset + size] = chunk
                chunk += 1
            pos += length
        assert pos <= n, f"row {r} holds {pos} tokens, more than {n}"
    return doc_ids, chunk_ids


def random_rows(batch: int, n: int, seed: int, max_doc: int = 120, max_chunk: int = 40) -> list[list[Doc]]:
    """Random documents (1 to ``max_doc`` tokens) with random, possibly adjacent chunks, and random padding."""
    rng = random.Random(seed)
    rows = []
    for _ in range(batch):
        docs, free = [], n - rng.choice([0, 0, rng.randrange(n // 4)])
        while free > 0:
            length = min(free, rng.randint(1, max_doc))
            chunks, pos = [], rng.randrange(length)
            while pos < length and rng.random() < 0.8:
                size = min(length - pos, rng.randint(1, max_chunk))
                chunks.append((pos, size))
                pos += size + rng.choice([0, rng.randrange(1, 30)])
            docs.append((length, chunks))
            free -= length
        rows.append(docs)
    return rows
