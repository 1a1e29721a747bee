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
    conv_width: int = 256
    """Channels of the Conv1D encoder and decoder of each part."""
    mano_model_dir: str | None = None
    """Folder with MANO_RIGHT.pkl / MANO_LEFT.pkl for forward kinematics through ``smplx`` (optional package);
    None uses the built-in template skeleton. Joints feed the reconstruction metrics."""

    # Training (``jala tokenizer train``); inference ignores these.
    train_steps: int = 20000
    """Optimiser steps of tokenizer training (``--steps`` overrides)."""
    batch_size: int = 256
    """15-frame chunks per step on each rank."""
    lr: float = 2e-4
    """Peak AdamW learning rate of the encoder and decoder (cosine decay to zero); codebooks learn by EMA."""
    commitment_weight: float = 0.25
    """Weight of the commitment loss that pulls encoder outputs towards their quantized values."""
    velocity_weight: float = 0.5
    """Weight of the frame-to-frame velocity reconstruction loss (smooth, jitter-free decodes)."""
    ema_decay: float = 0.99
    """Decay of the codebooks' EMA statistics (assignment counts and sums, kept in fp32)."""
    dead_code_threshold: float = 0.1
    """A codeword whose EMA assignment count per step falls below this is restarted on a random residual of the
    current batch; 0 disables restarts."""
    stats_chunks: int = 100000
    """Chunks read (from the start of the corpus) to compute the per-dimension normalisation statistics."""
    log_every: int = 50
    """Log losses, reconstruction metrics and codebook usage every this many steps."""

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

    def check_chunk_frames(self, chunk_frames: int) -> None:
        """``data.chunk_frames`` fits the frames the GRVQ model pads a chunk to; else the model refuses it only once
        every rank has started (``jala tokenizer train`` may train on any length up to that)."""
        padded = self.steps * self.downsample
        require(1 < chunk_frames <= padded, "data.chunk_frames",
                f"{chunk_frames} does not fit the tokenizer's {padded} padded frames: use 15 (the paper's)")

    def check_binning_chunk_frames(self, chunk_frames: int) -> None:
        """Training with the binning stand-in reads ``data.chunk_frames`` chunks: it encodes 15-frame ones only, and
        the sequence builder would refuse any other length at the first batch, after the process group started."""
        from jala_ds.data.motion_tokens import CHUNK_FRAMES  # here: that module imports this one

        require(self.kind != "binning" or chunk_frames == CHUNK_FRAMES, "data.chunk_frames",
                f"{chunk_frames}, but motion_tokenizer.kind=binning encodes {CHUNK_FRAMES}-frame chunks: set "
                f"data.chunk_frames={CHUNK_FRAMES}, or train a GRVQ tokenizer on {chunk_frames}-frame chunks "
                "(motion_tokenizer.kind=grvq)")

    def validate(self) -> None:
        require(self.downsample in (1, 2, 4, 8, 16), "motion_tokenizer.downsample", "must divide 16")
        require(self.groups > 0 and self.stages > 0, "motion_tokenizer.groups",
                "groups and stages must be positive")
        require(self.codes_per_stage > 1, "motion_tokenizer.codes_per_stage", "must be at least 2")
        require(self.latent_dim > 0 and self.latent_dim % self.groups == 0, "motion_tokenizer.latent_dim",
                f"must be a positive multiple of groups={self.groups}")
        require(self.conv_width > 0, "motion_tokenizer.conv_width", "must be positive")
        require(self.train_steps > 0, "motion_tokenizer.train_steps", "must be positive")
        require(self.batch_size > 0, "motion_tokenizer.batch_size", "must be positive")
        require(self.lr > 0, "motion_tokenizer.lr", "must be positive")
        require(self.commitment_weight >= 0, "motion_tokenizer.commitment_weight", "must be >= 0")
        require(self.velocity_weight >= 0, "motion_tokenizer.velocity_weight", "must be >= 0 (0 disables it)")
        require(0.0 < self.ema_decay < 1.0, "motion_tokenizer.ema_decay", "must lie in (0, 1), e.g. 0.99")
        require(self.dead_code_threshold >= 0, "motion_tokenizer.dead_code_threshold",
                "must be >= 0 (0 disables dead-code restarts)")
        require(self.stats_chunks > 0, "motion_tokenizer.stats_chunks", "must be positive")
        require(self.log_every > 0, "motion_tokenizer.log_every", "must be positive")
        require(self.kind != "grvq" or bool(self.checkpoint), "motion_tokenizer.checkpoint",
                "kind=grvq needs a checkpoint: train one with `jala tokenizer train` or use kind=binning")
