"""MANO pose chunks from the MDS corpus: what the motion tokenizer trains on.

``<mds_dir>/lab`` and ``<mds_dir>/wild`` are read in place (``open_mds``: random access to every record, each
shard hash-checked when first read if the index records hashes); records follow ``jala_ds.data.schema``. Every
hand sequence that is present (``left``/``right`` ``[T, 99]`` with ``T >= chunk_frames``: lab clips and
pseudo-labelled wild clips) contributes chunks.

    corpus = PoseCorpus("demo_out/mds")
    mean, std = corpus.normalization_stats(chunk_frames=15, max_chunks=100_000)
    for batch in corpus.chunk_batches(chunk_frames=15, batch_size=256, seed=0):   # [B, 15, 99], forever
        ...
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from streaming import LocalDataset

from jala_ds.data.schema import HANDS, SUBSETS, hand_poses
from jala_ds.data.shard_check import verify_shard

SHUFFLE_BUFFER_BATCHES = 8
"""Chunks are shuffled within a buffer of this many batches, so one clip's chunks spread over many steps."""
STD_FLOOR = 1e-3
"""Dimensions that hardly vary (a fixed joint in the data) are scaled by at most 1 / STD_FLOOR."""


class CheckedLocalDataset(LocalDataset):
    """Every record of an MDS dataset in a local folder, by index, whatever the process' place in a torchrun
    world; each shard checked against its recorded hash the first time one of its records is read.

    Not ``StreamingDataset``: its ``len`` is one rank's share of an epoch, so under torchrun (WORLD_SIZE > 1)
    ``range(len(dataset))`` would skip the rest of the records, and it checks hashes only of shards it downloads.
    """

    def __init__(self, path: str | Path):
        super().__init__(local=str(path))
        self.unchecked = {i for i, shard in enumerate(self.shards)
                          if any(info.hashes for info, _ in shard.file_pairs)}

    def get_item(self, sample_id: int) -> dict[str, Any]:
        shard_id, _ = self.spanner[sample_id]
        if shard_id in self.unchecked:
            verify_shard(self.shards[shard_id])
            self.unchecked.discard(shard_id)
        return super().get_item(sample_id)


def open_mds(path: str | Path) -> CheckedLocalDataset:
    """The MDS dataset at ``path``; one clear error when there is none."""
    if not (Path(path) / "index.json").is_file():
        raise FileNotFoundError(f"{path} is not an MDS dataset (no index.json): run `jala data convert` first")
    return CheckedLocalDataset(path)


class PoseCorpus:
    """The hand-pose sequences of a converted corpus, sample by sample across the lab and wild subsets."""

    def __init__(self, mds_dir: str | Path):
        self.mds_dir = Path(mds_dir)
        present = [s for s in SUBSETS if (self.mds_dir / s / "index.json").is_file()]
        if not present:
            raise FileNotFoundError(f"no MDS subsets under {self.mds_dir} (expected lab/ and/or wild/ with "
                                    "index.json): point data.mds_dir at the output of `jala data convert`")
        self.datasets = [open_mds(self.mds_dir / s) for s in present]
        self.sizes = [len(d) for d in self.datasets]

    def __len__(self) -> int:
        return sum(self.sizes)

    def sequences(self, sample_ids: np.ndarray | range) -> Iterator[tuple[str, np.ndarray]]:
        """``(hand, poses [T, 99])`` for each present hand sequence of the given corpus-wide sample ids."""
        offsets = np.cumsum([0] + self.sizes)
        for sample_id in sample_ids:
            subset = int(np.searchsorted(offsets, sample_id, side="right")) - 1
            sample = self.datasets[subset][int(sample_id - offsets[subset])]
            for hand in HANDS:
                poses = hand_poses(sample, hand)
                if poses.shape[0] > 0:
                    yield hand, poses

    def normalization_stats(self, chunk_frames: int, max_chunks: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Per-dimension mean and std over the frames of the corpus' first ``max_chunks`` whole chunks, in
        sample order (deterministic, so every rank computes the same numbers), and the chunk count used."""
        total = np.zeros(99)
        total_sq = np.zeros(99)
        chunks = 0
        for _, poses in self.sequences(range(len(self))):
            take = min(poses.shape[0] // chunk_frames, max_chunks - chunks)
            frames = poses[:take * chunk_frames].astype(np.float64)
            total += frames.sum(0)
            total_sq += (frames ** 2).sum(0)
            chunks += take
            if chunks >= max_chunks:
                break
        if chunks == 0:
            raise ValueError(f"no hand sequence of at least {chunk_frames} frames in {self.mds_dir}: the tokenizer "
                             "needs MANO labels (lab clips or pseudo-labelled wild clips)")
        frames = chunks * chunk_frames
        mean = total / frames
        std = np.sqrt(np.maximum(total_sq / frames - mean ** 2, 0.0))
        return mean.astype(np.float32), np.maximum(std, STD_FLOOR).astype(np.float32), chunks

    def chunk_batches(self, chunk_frames: int, batch_size: int, seed: int, rank: int = 0,
                      world_size: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless ``(chunks [B, chunk_frames, 99], is_right [B])`` batches of this rank's share of the corpus.

        Each epoch visits the samples in a seeded order, ranks taking every ``world_size``-th; each sequence
        is cut into whole chunks from a random start within its leftover tail, so chunk boundaries vary.
        """
        rng = np.random.default_rng([seed, rank])
        buffer: list[tuple[np.ndarray, bool]] = []
        epoch = 0
        while True:
            order = np.random.default_rng([seed, epoch]).permutation(len(self))[rank::world_size]
            produced = False
            for hand, poses in self.sequences(order):
                count = poses.shape[0] // chunk_frames
                if count == 0:
                    continue
                start = int(rng.integers(0, poses.shape[0] - count * chunk_frames + 1))
                windows = poses[start:start + count * chunk_frames].reshape(count, chunk_frames, -1)
                buffer.extend((w, hand == "right") for w in windows)
                produced = True
                while len(buffer) >= SHUFFLE_BUFFER_BATCHES * batch_size:
                    yield self.take_batch(buffer, batch_size, rng)
            if not produced:
                raise ValueError(f"rank {rank} found no hand sequence of at least {chunk_frames} frames in "
                                 f"{self.mds_dir}: the tokenizer needs MANO labels")
            while len(buffer) >= batch_size:
                yield self.take_batch(buffer, batch_size, rng)
            epoch += 1

    @staticmethod
    def take_batch(buffer: list, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        picks = set(rng.choice(len(buffer), batch_size, replace=False).tolist())
        batch = [buffer[i] for i in sorted(picks)]
        buffer[:] = [item for i, item in enumerate(buffer) if i not in picks]
        return np.stack([chunk for chunk, _ in batch]), np.array([right for _, right in batch])
