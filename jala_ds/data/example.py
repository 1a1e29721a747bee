"""A record becomes a training example: its token document plus the pixels that document refers to.

This runs once per sample in a loader worker: build the document (tokens, masking), decode only the stored
frames it uses (its image and its chunks' boundary frames), resize them for the two vision models. Pixels
stay uint8 (the model normalises them on its device).
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
    chunk_frames: torch.Tensor
    """uint8 ``[c, 2, 3, s, s]``: boundary frames of each chunk at ``model.visual_encoder_image_size``."""
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
        used = sorted({document.image_frame, *document.chunk_frames.ravel().tolist()})
        position = {frame: i for i, frame in enumerate(used)}
        frames = decode_stored_frames(record, used)
        image = resized(frames[position[document.image_frame]], self.image_size)[None]
        pairs = torch.tensor([[position[a], position[b]] for a, b in document.chunk_frames.tolist()])
        return Example(document, image, resized(frames, self.encoder_image_size)[pairs])
