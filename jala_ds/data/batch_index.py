"""The positions a training forward gathers from and scatters to, found on the host when a batch is collated.

Found on the GPU, each of them (``nonzero``, a count checked against a shape, a layout check) makes the host wait
until the device has finished everything queued before it; a forward with four of them cannot queue the next
layers while the vision tower or the language model still runs. Found here, in the loader's workers, they cost
the training process nothing, and the model checks their counts from shapes alone (docs/performance.md, s. 5).
"""
from __future__ import annotations

import numpy as np
import torch

from jala_kernels import chunk_attention_bounds


def batch_index(input_ids: torch.Tensor, labels: torch.Tensor, motion_chunk: torch.Tensor, doc_ids: torch.Tensor,
                chunk_ids: torch.Tensor, *, num_chunks: int, image_token_id: int, ignore: int) -> dict[str, torch.Tensor]:
    """The index fields of docs/architecture.md section 4 for one batch's ``[B, N]`` layout (CPU tensors).

    - ``image_positions`` int64 ``[I * n]``: flat positions of the ``<IMG_CONTEXT>`` tokens, in row-major order;
    - ``label_positions`` int64 ``[P]``: flat positions whose label is not ``ignore``;
    - ``chunk_tokens`` int64 ``[C, T]``: flat positions of each chunk's motion tokens, in sequence order;
    - ``chunk_bounds`` int32 ``[4, B, N]``: the chunk mask as intervals (``jala_kernels.ChunkBounds``), which
      also checks that each document and each chunk is one run of positions.
    """
    flat_chunk = motion_chunk.numpy().reshape(-1)
    in_chunk = np.flatnonzero(flat_chunk >= 0)
    counts = np.bincount(flat_chunk[in_chunk], minlength=num_chunks)
    if len(counts) != num_chunks or (num_chunks and (counts != counts[0]).any()):
        raise ValueError(f"motion_chunk: the batch's {num_chunks} chunks (len(chunk_hand)) must own equal numbers of "
                         f"positions, got {counts.tolist()}: give every chunk motion_tokenizer.tokens_per_chunk codes "
                         "(SequenceBuilder's documents do)")
    order = np.argsort(flat_chunk[in_chunk], kind="stable")  # stable: each chunk's positions stay in sequence order
    chunk_tokens = in_chunk[order].reshape(num_chunks, counts[0] if num_chunks else 0)
    return {
        "image_positions": torch.from_numpy(np.flatnonzero(input_ids.numpy().reshape(-1) == image_token_id)),
        "label_positions": torch.from_numpy(np.flatnonzero(labels.numpy().reshape(-1) != ignore)),
        "chunk_tokens": torch.from_numpy(chunk_tokens),
        "chunk_bounds": torch.stack(chunk_attention_bounds(doc_ids, chunk_ids)),
    }
