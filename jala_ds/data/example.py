"""A record becomes a training example: its token document plus the pixels that document refers to.

This runs once per sample in a loader worker: build the document (tokens, masking), decode only the stored
frames it uses (its image and its chunks' boundary frames), resize them for the two vision models. Pixels
stay uint8 (the model normalises them on its device). Each boundary frame is shipped once, with each chunk's
index into them: both hands' chunks at a step share their pair, and a chunk's last frame is the next one's first,
so the frozen frame encoder reads each frame once instead of twice per chunk.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from jala_ds.data.frames import decode_stored_frames, resized
from jala_ds.data.sequence import Document, SequenceBuilder


@dataclass
class Example:
    document: Document
    pixel_values: torch.Tensor
    """uint8 ``[images, 3, S, S]``: the document's images at ``model.image_size``, in the order of its
    ``<IMG_CONTEXT>`` runs (one for a clip, one per camera for a robot observation)."""
    encoder_frames: torch.Tensor
    """uint8 ``[f, 3, s, s]``: the distinct boundary frames of the document's chunks at
    ``model.visual_encoder_image_size``, in time order."""
    chunk_frame_index: torch.Tensor
    """int64 ``[c, 2]``: each chunk's (o_t, o_t+k) as rows of ``encoder_frames``."""
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-sample arrays the batch stacks under the same keys (a robot sample's ``state``, ``actions``,
    ``action_valid``); empty in pretraining."""


class ExampleBuilder:
    def __init__(self, sequences: SequenceBuilder, *, image_size: int, encoder_image_size: int) -> None:
        self.sequences = sequences
        self.image_size, self.encoder_image_size = image_size, encoder_image_size

    def build(self, record: Mapping, sample_index: int, epoch: int) -> Example:
        return self.with_pixels(record, self.sequences.build(record, sample_index, epoch))

    def with_pixels(self, record: Mapping, document: Document) -> Example:
        """``document`` (of ``record``) with its frames: training's documents, and generation's (``jala_ds.eval``)."""
        boundaries, pairs = np.unique(document.chunk_frames, return_inverse=True)
        used = sorted({document.image_frame, *boundaries.tolist()})
        frames = decode_stored_frames(record, used)
        image = resized(frames[used.index(document.image_frame)], self.image_size)[None]
        encoder_frames = resized(frames[[used.index(frame) for frame in boundaries.tolist()]], self.encoder_image_size)
        return Example(document, image, encoder_frames, torch.from_numpy(pairs.reshape(-1, 2)))
