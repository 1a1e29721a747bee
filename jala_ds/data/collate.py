"""Examples -> the batch of docs/architecture.md section 4, padded (one document per row) or packed.

Packing (``data.pack``) cuts the documents, in order, into as few rows as ``data.max_tokens`` allows, and
among those cuts takes the one whose longest row is shortest: rows are padded to the longest row, so a
greedy fill (a full row, then a short remainder padded to full length) would waste up to half the batch.
A micro-batch always holds ``train.micro_batch_size`` documents (what the loader's exact resume and
``train.global_batch_size`` count), spread over as many rows as they need.

Within a row, ``doc_ids`` number the documents and ``chunk_ids`` the bidirectional motion chunks;
``motion_chunk`` numbers every chunk of the whole batch, indexing ``chunk_frame_index`` (rows of
``encoder_frames``), ``chunk_hand`` and ``chunk_labeled``. Images, frames and chunks appear in row-major
document order. An example's ``extras`` (a robot sample's state and actions) are stacked in the same order
under their own keys. The positions the model gathers from and scatters to come along, found here on the host
(``batch_index.py``). Pixels stay uint8: the model normalises them on its device.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from jala_ds.data.batch_index import batch_index
from jala_ds.data.example import Example
from jala_ds.data.sequence import IGNORE
from jala_ds.vocab import MotionVocab


def fill_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Greedy, order-preserving fill: a document joins the current row if it fits in ``width``, else opens the
    next. For a given width no order-preserving cut has fewer rows."""
    rows: list[list[int]] = []
    used = 0
    for index, length in enumerate(lengths):
        if not rows or used + length > width:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += length
    return rows


def pack_rows(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """The indices of the documents in each row: the fewest rows of at most ``max_tokens``, in order, and of
    those cuts the one with the shortest longest row (the padded width of the batch).

    The row count of a greedy fill only falls as the width grows, so the narrowest width that still fits the
    fewest rows is found by bisection between the longest document and ``max_tokens``.
    """
    rows = fill_rows(lengths, max_tokens)
    low, high = max(lengths, default=0), max_tokens
    while low < high:
        width = (low + high) // 2
        if len(fill_rows(lengths, width)) <= len(rows):
            high = width
        else:
            low = width + 1
    return fill_rows(lengths, low)


def collate(examples: list[Example], *, pack: bool, max_tokens: int, vocab: MotionVocab) -> dict[str, Any]:
    """The model's batch for ``examples`` (a ``functools.partial`` of this is the loader's ``collate_fn``)."""
    documents = [example.document for example in examples]
    lengths = [len(doc) for doc in documents]
    for doc, length in zip(documents, lengths):
        if length > max_tokens:
            raise ValueError(f"sample {doc.sample_id} has {length} tokens, more than data.max_tokens={max_tokens}: "
                             "raise data.max_tokens, or lower data.max_chunks or data.max_text_tokens")
    rows = pack_rows(lengths, max_tokens) if pack else [[i] for i in range(len(documents))]
    width = max(sum(lengths[i] for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = np.full(shape, vocab.pad, np.int64)
    labels = np.full(shape, IGNORE, np.int64)
    position_ids = np.zeros(shape, np.int64)
    doc_ids = np.full(shape, -1, np.int32)
    chunk_ids = np.full(shape, -1, np.int32)
    motion_chunk = np.full(shape, -1, np.int64)
    batch_chunks = 0
    for r, row in enumerate(rows):
        offset = row_chunks = 0
        for d, index in enumerate(row):
            doc = documents[index]
            span = slice(offset, offset + len(doc))
            input_ids[r, span], labels[r, span] = doc.input_ids, doc.labels
            position_ids[r, span] = np.arange(len(doc))
            doc_ids[r, span] = d
            in_chunk = doc.motion_chunk >= 0
            motion_chunk[r, span] = np.where(in_chunk, doc.motion_chunk + batch_chunks, -1)
            if doc.bidirectional:
                chunk_ids[r, span] = np.where(in_chunk, doc.motion_chunk + row_chunks, -1)
            offset += len(doc)
            row_chunks += len(doc.chunk_hand)
            batch_chunks += len(doc.chunk_hand)
    order = [index for row in rows for index in row]
    first_frame = np.cumsum([0] + [len(examples[i].encoder_frames) for i in order])  # each example's in the batch's
    layout = {"input_ids": input_ids, "labels": labels, "motion_chunk": motion_chunk, "doc_ids": doc_ids,
              "chunk_ids": chunk_ids}
    layout = {key: torch.from_numpy(value) for key, value in layout.items()}
    return {
        **layout,
        "position_ids": torch.from_numpy(position_ids),
        "pixel_values": torch.cat([examples[i].pixel_values for i in order]),
        "encoder_frames": torch.cat([examples[i].encoder_frames for i in order]),
        "chunk_frame_index": torch.cat([examples[i].chunk_frame_index + int(first)
                                        for i, first in zip(order, first_frame)]),
        "chunk_hand": torch.from_numpy(np.concatenate([documents[i].chunk_hand for i in order])),
        "chunk_labeled": torch.tensor([documents[i].labeled for i in order for _ in documents[i].chunk_hand],
                                      dtype=torch.bool),
        "sample_ids": [documents[i].sample_id for i in order],
        **batch_index(**layout, num_chunks=batch_chunks, image_token_id=vocab.img_context, ignore=IGNORE),
        **{key: torch.from_numpy(np.stack([examples[i].extras[key] for i in order])) for key in examples[0].extras},
    }
