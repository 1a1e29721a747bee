"""Robot section of a post-training recipe: which converted robot dataset, which cameras, how samples are built."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jala_ds.config_checks import require


@dataclass
class RobotDataConfig:
    mds_dir: str = "data/robot_mds"
    """A robot dataset converted by ``jala data convert --format lerobot``: MDS shards, ``robot_meta.json`` and
    ``norm_stats.json``."""
    cameras: list[str] | None = None
    """Camera keys fed to the model, in this order (e.g. ``[observation.images.image]`` for one view); null takes
    every camera the dataset stores, in its stored order."""
    action_horizon: int = 16
    """Actions per sample; must not exceed the horizon the dataset was converted with (``robot_meta.json``), and
    must equal ``action_head.action_horizon``."""
    norm_mode: Literal["quantile", "meanstd"] = "quantile"
    """Normalisation the dataset's ``norm_stats.json`` was computed for; a mismatch is refused at load."""
    hand: int = 1
    """Which hand's LSP head reads the robot's camera (0 left, 1 right): the robot arm plays that hand."""
    max_text_tokens: int = 64
    """Instructions are truncated to this many tokens."""
    num_workers: int = 0
    """Loader worker processes per rank."""
    prefetch_factor: int = 4
    """Batches prefetched per worker (only with num_workers > 0)."""
    shuffle: bool = True
    """Shuffle samples (streaming's deterministic shuffle, seeded by train.seed)."""
    validate_hashes: bool = True
    """Check each shard's hash when it is opened; a corrupted shard fails with its name."""
    num_canonical_nodes: int | None = None
    """Streaming's canonical node count (see ``data.num_canonical_nodes``); null takes the first launch's."""

    def validate(self) -> None:
        require(self.cameras is None or len(self.cameras) > 0, "robot.cameras",
                "must list at least one camera key, or be null for all of them")
        require(self.cameras is None or len(set(self.cameras)) == len(self.cameras), "robot.cameras",
                "lists a camera twice")
        require(self.action_horizon > 0, "robot.action_horizon", "must be positive")
        require(self.hand in (0, 1), "robot.hand", "must be 0 (left) or 1 (right)")
        require(self.max_text_tokens > 0, "robot.max_text_tokens", "must be positive")
        require(self.num_workers >= 0, "robot.num_workers", "must be >= 0")
        require(self.prefetch_factor > 0, "robot.prefetch_factor", "must be positive")
        require(self.num_canonical_nodes is None or self.num_canonical_nodes > 0, "robot.num_canonical_nodes",
                "must be positive, or null for the node count of the first launch")
