"""Motion tokenizer section: how a 15-frame MANO chunk of one hand becomes discrete tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jala_ds.config_checks import require


@dataclass
class TokenizerConfig:
    kind: Literal["binning", "grvq"] = "binning"
    """``binning``: the deterministic stand-in (no training needed); ``grvq``: the learned GRVQ tokenizer."""
    checkpoint: str | None = None
    """GRVQ tokenizer checkpoint (``jala tokenizer train`` writes it); required when kind is grvq."""
    downsample: int = 4
    """Temporal downsampling of the Conv1D encoder: 16 padded frames -> 4 steps."""
    groups: int = 2
    """GRVQ groups G per part."""
    stages: int = 8
    """Residual stages R per group."""
    codes_per_stage: int = 512
    """Codebook size K of each stage; the vocabulary of a part is stages * codes_per_stage."""
    latent_dim: int = 512
    """Width of the quantized latent (split evenly into groups)."""

    @property
    def steps(self) -> int:
        """Latent time steps per chunk (15 frames padded up to a multiple of ``downsample``)."""
        return 16 // self.downsample

    @property
    def tokens_per_part(self) -> int:
        return self.steps * self.groups * self.stages

    @property
    def tokens_per_chunk(self) -> int:
        """Tokens of one hand's chunk: wrist part first, then finger part."""
        return 2 * self.tokens_per_part

    @property
    def vocab_per_part(self) -> int:
        return self.stages * self.codes_per_stage

    def validate(self) -> None:
        require(self.downsample in (1, 2, 4, 8, 16), "motion_tokenizer.downsample", "must divide 16")
        require(self.groups > 0 and self.stages > 0, "motion_tokenizer.groups",
                "groups and stages must be positive")
        require(self.codes_per_stage > 1, "motion_tokenizer.codes_per_stage", "must be at least 2")
        require(self.latent_dim % self.groups == 0, "motion_tokenizer.latent_dim",
                f"must be divisible by groups={self.groups}")
        require(self.kind != "grvq" or bool(self.checkpoint), "motion_tokenizer.checkpoint",
                "kind=grvq needs a checkpoint: train one with `jala tokenizer train` or use kind=binning")
