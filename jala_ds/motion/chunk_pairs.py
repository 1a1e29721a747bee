"""A clip's chunks as (boundary frames, hand, motion codes): what the action-token predictor learns from.

Chunk ``j`` of a clip spans stored frames ``j`` and ``j + 1`` (``frame_index`` lists one boundary frame per
chunk, plus the last); its codes are one hand's ``[tokens_per_chunk]`` motion tokens, stored by ``jala data
tokenize`` or encoded from the poses by the recipe's motion tokenizer, as the sequence builder finds them.

    pairs = labelled_pairs(record, tokenizer, image_size=224)   # every present hand's chunks, with codes
    for frames, hand, codes in LabelledChunkStream(...):         # endless, shuffled, for a DataLoader
        ...
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from jala_ds.data.frames import decode_stored_frames, resized
from jala_ds.data.motion_tokens import MotionTokenizer
from jala_ds.data.schema import HANDS, SUBSETS, hand_poses, hand_tokens, labelled_hands
from jala_ds.motion.pose_corpus import open_mds

SHUFFLE_BUFFER_PAIRS = 2048
"""Pairs are shuffled within a buffer this deep, so one clip's chunks spread over many steps."""


@dataclass
class ChunkPairs:
    frames: torch.Tensor
    """uint8 ``[n, 2, 3, s, s]``: each chunk's boundary frames (o_t, o_t+k)."""
    hand: torch.Tensor
    """int64 ``[n]``: 0 left, 1 right."""
    codes: torch.Tensor
    """int64 ``[n, tokens_per_chunk]`` in ``[0, vocab_per_part)``."""


def boundary_frames(record: Mapping, image_size: int) -> torch.Tensor:
    """uint8 ``[chunks + 1, 3, s, s]``: every stored boundary frame of the clip, resized for the encoder."""
    return resized(decode_stored_frames(record, list(range(len(record["frame_index"])))), image_size)


def hand_codes(record: Mapping, hand: str, tokenizer: MotionTokenizer) -> np.ndarray:
    """int32 ``[chunks, tokens_per_chunk]`` codes of a present hand: stored if the corpus has them, else encoded."""
    stored = hand_tokens(record, hand)
    if stored is not None:
        return stored
    chunks = len(record["frame_index"]) - 1
    return tokenizer.encode(hand_poses(record, hand)[:chunks * tokenizer.chunk_frames])


def labelled_pairs(record: Mapping, tokenizer: MotionTokenizer, image_size: int) -> ChunkPairs:
    """Every chunk of every labelled hand (lab clips, trusted pseudo-labelled wild clips) and its codes."""
    hands = labelled_hands(record)
    frames = boundary_frames(record, image_size)
    chunks = frames.shape[0] - 1
    return ChunkPairs(frames=torch.stack([frames[:-1], frames[1:]], dim=1).repeat(len(hands), 1, 1, 1, 1),
                      hand=torch.tensor(hands, dtype=torch.int64).repeat_interleave(chunks),
                      codes=torch.from_numpy(np.concatenate(
                          [hand_codes(record, HANDS[h], tokenizer) for h in hands]
                          or [np.zeros((0, tokenizer.tokens_per_chunk), np.int32)])).long())


class LabelledChunkStream(IterableDataset):
    """Endless labelled pairs ``(frames uint8 [2, 3, s, s], hand, codes [T])`` of ``<mds_dir>/lab`` and ``/wild``.

    Each epoch visits the clips in a seeded order; ranks take every ``world_size``-th clip and loader workers
    every ``workers``-th of a rank's, so no two read the same clip. Video-only clips are passed over."""

    def __init__(self, mds_dir: str | Path, tokenizer: MotionTokenizer, *, image_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.mds_dir = Path(mds_dir)
        self.subsets = [s for s in SUBSETS if (self.mds_dir / s / "index.json").is_file()]
        if not self.subsets:
            raise FileNotFoundError(f"no MDS subsets under {self.mds_dir} (expected lab/ and/or wild/ with "
                                    "index.json): point data.mds_dir at the output of `jala data convert`")
        # Opened once, here: loader workers get copies (plain readers of the shard files, nothing shared).
        self.datasets = [open_mds(self.mds_dir / s) for s in self.subsets]
        self.tokenizer, self.image_size = tokenizer, image_size
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, torch.Tensor]]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        rng = np.random.default_rng([self.seed, self.rank, worker_id])
        buffer: list[tuple[torch.Tensor, int, torch.Tensor]] = []
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(offsets[-1])
            produced = False
            for sample_id in order[self.rank::self.world_size][worker_id::workers]:
                subset = int(np.searchsorted(offsets, sample_id, side="right")) - 1
                record = self.datasets[subset][int(sample_id - offsets[subset])]
                if not record["labeled"]:
                    continue
                pairs = labelled_pairs(record, self.tokenizer, self.image_size)
                buffer.extend(zip(pairs.frames, pairs.hand.tolist(), pairs.codes))
                produced = produced or len(pairs.hand) > 0
                while len(buffer) >= SHUFFLE_BUFFER_PAIRS:
                    i = int(rng.integers(len(buffer)))
                    buffer[i], buffer[-1] = buffer[-1], buffer[i]
                    yield buffer.pop()
            if not produced:
                raise ValueError(f"no labelled chunk in {self.mds_dir} for rank {self.rank}, loader worker "
                                 f"{worker_id}: the predictor trains on lab clips or pseudo-labelled wild clips")
            rng.shuffle(buffer)
            while buffer:
                yield buffer.pop()
            epoch += 1
