"""Where each motion chunk's tokens sit in a batch: the bridge between ``[B, N]`` sequences and ``[C, T]`` chunks."""
from __future__ import annotations

import torch


def chunk_token_index(motion_chunk: torch.Tensor, num_chunks: int, tokens_per_chunk: int) -> torch.Tensor:
    """Flat indices into ``B * N`` of every chunk's tokens, ``[C, T]``, each row in sequence order.

    ``motion_chunk [B, N]`` holds the chunk index in ``[0, C)`` of a motion position and -1 elsewhere
    (docs/architecture.md, section 4); every chunk must own exactly ``tokens_per_chunk`` positions.
    """
    flat = motion_chunk.flatten()
    positions = (flat >= 0).nonzero().squeeze(1)
    chunk = flat[positions]
    counts = torch.bincount(chunk, minlength=num_chunks)
    if counts.numel() != num_chunks or bool((counts != tokens_per_chunk).any()):
        raise ValueError(f"batch['motion_chunk'] must give each of the {num_chunks} chunks (len(chunk_hand)) "
                         f"exactly {tokens_per_chunk} positions (motion_tokenizer.tokens_per_chunk); got counts "
                         f"{counts.tolist()}: the collate and the model disagree on the motion layout")
    order = torch.argsort(chunk, stable=True)  # stable: keeps each chunk's positions in sequence order
    return positions[order].view(num_chunks, tokens_per_chunk)
