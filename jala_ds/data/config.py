"""Data section of a recipe: where the corpus is, how streams mix, how samples become token sequences."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jala_ds.config_checks import require


@dataclass
class DataConfig:
    mds_dir: str = "data/mds"
    """Root of the converted corpus: ``<mds_dir>/lab`` and ``<mds_dir>/wild`` are MDS datasets."""
    lab_proportion: float | None = None
    """Share of lab samples in the mix; None keeps the corpus' natural sizes (5M lab : 2.5M wild in the paper)."""
    labeled_only: bool = False
    """Train on the lab stream alone, the clips with motion-capture labels (the JALA-act and Being-H0 rows of the
    paper's tables); wild clips with pseudo labels are left out with the rest of the wild stream (docs/method.md)."""
    pseudo_labels_as_unlabeled: bool = False
    """Treat pseudo-labelled wild clips as video-only (the paper's JALA-star ablation)."""
    chunk_frames: int = 15
    """Frames per motion chunk."""
    max_chunks: int = 1
    """Motion chunks per hand in one training sample; a longer clip gives one window of this many chunks,
    drawn anew each epoch (deterministically from train.seed, the epoch and the sample)."""
    video_only_hands: Literal["both", "right"] = "both"
    """Motion streams of a video-only sample, whose hands are unknown: both (L, R interleaved) or right only."""
    wild_slowdown: float = 2.0
    """In-the-wild clips are slowed in time by this factor so their motion speed matches lab data."""
    min_pseudo_confidence: float = 0.65
    """Wild pseudo labels with a mean confidence below this are dropped (the clip stays, as video-only)."""
    heldout_fraction: float = 0.05
    """Share of labelled clips (lab, and wild with trusted pseudo labels) that ``jala data convert`` writes to
    ``<mds_dir>/heldout/<subset>`` instead of the training streams, chosen by a hash of the clip id (the same
    clips for any worker count or manifest order); ``jala eval motion`` scores them. 0 holds nothing out."""
    frame_size: int = 224
    """Side of the square JPEG frames stored in the shards (resized again to each encoder's input size)."""
    mask_ratio_min: float = 0.3
    """Lower end of the masking ratio drawn uniformly for the target chunk (hybrid masking)."""
    mask_ratio_max: float = 1.0
    """Upper end of that ratio."""
    later_chunk_mask_prob: float = 0.05
    """Masking probability of motion tokens in chunks after the target chunk."""
    max_text_tokens: int = 64
    """Instructions are truncated to this many tokens."""
    pack: bool = False
    """Pack several samples into one row up to ``max_tokens`` instead of padding each sample to its own row."""
    max_tokens: int = 1024
    """Token budget of one packed row (and the longest padded row)."""
    num_workers: int = 0
    """Loader worker processes per rank."""
    prefetch_factor: int = 4
    """Batches prefetched per worker (only with num_workers > 0)."""
    shuffle: bool = True
    """Shuffle samples (streaming's deterministic shuffle, seeded by train.seed)."""
    validate_hashes: bool = True
    """Check each shard's hash when it is opened; a corrupted shard fails with its name."""
    num_canonical_nodes: int | None = None
    """Streaming's canonical node count, which fixes the global sample order and each rank's share of it; null
    takes the node count of the run's first launch. Set it to run on a different node count (a divisor or a
    multiple of it) with exactly the same samples on the same ranks."""

    def validate(self) -> None:
        require(self.lab_proportion is None or 0.0 <= self.lab_proportion <= 1.0, "data.lab_proportion",
                "must lie in [0, 1] or be null")
        require(self.chunk_frames > 0, "data.chunk_frames", "must be positive (the paper uses 15)")
        require(self.max_chunks > 0, "data.max_chunks", "must be at least 1")
        require(self.wild_slowdown >= 1.0, "data.wild_slowdown", "must be >= 1 (1 disables the slow-down)")
        require(0.0 <= self.min_pseudo_confidence <= 1.0, "data.min_pseudo_confidence", "must lie in [0, 1]")
        require(0.0 <= self.heldout_fraction < 1.0, "data.heldout_fraction",
                "must lie in [0, 1) (0 holds no clip out; 0.05 holds out about 5% of the labelled clips)")
        require(0.0 < self.mask_ratio_min <= self.mask_ratio_max <= 1.0, "data.mask_ratio_min",
                "need 0 < mask_ratio_min <= mask_ratio_max <= 1")
        require(0.0 <= self.later_chunk_mask_prob <= 1.0, "data.later_chunk_mask_prob", "must lie in [0, 1]")
        require(self.max_tokens > 0, "data.max_tokens", "must be positive")
        require(self.num_canonical_nodes is None or self.num_canonical_nodes > 0, "data.num_canonical_nodes",
                "must be positive, or null for the node count of the first launch")
        require(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        require(self.frame_size >= 16, "data.frame_size", "must be at least 16 pixels")
        require(self.max_text_tokens > 0, "data.max_text_tokens", "must be positive")
        require(self.prefetch_factor > 0, "data.prefetch_factor", "must be positive")
        require(not self.labeled_only or self.lab_proportion in (None, 1.0), "data.lab_proportion",
                "labeled_only trains on the lab stream alone: set lab_proportion to null (or 1)")
