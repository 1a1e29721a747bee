"""Action-token predictor section: the paper's "JALA w/o latent" baseline, which labels video-only clips with
motion tokens predicted from their boundary frames (``jala token-predictor train`` and ``label``).

Its frozen visual encoder and its perceiver's shape are the recipe's ``model.visual_encoder*`` and
``model.perceiver_*`` (the LAP architecture, as the paper describes the predictor); its vocabulary is the motion
tokenizer's."""
from __future__ import annotations

from dataclasses import dataclass

from jala_ds.config_checks import require


@dataclass
class TokenPredictorConfig:
    checkpoint: str | None = None
    """Where ``jala token-predictor train`` writes the predictor and ``label`` reads it (default
    ``<train.out_dir>/token_predictor``)."""
    train_steps: int = 20000
    """Optimiser steps of predictor training (``--steps`` overrides)."""
    batch_chunks: int = 256
    """Labelled (chunk, hand) pairs per step on each rank."""
    lr: float = 3e-4
    """Peak AdamW learning rate (cosine decay to zero); the visual encoder stays frozen."""
    weight_decay: float = 0.05
    """AdamW weight decay of the perceiver and the classifier."""
    label_smoothing: float = 0.0
    """Label smoothing of the per-token cross-entropy."""
    probe_chunks: int = 256
    """Held-out (chunk, hand) pairs scored at every log (``<data.mds_dir>/heldout``, else the first training
    pairs): cross-entropy and token accuracy."""
    log_every: int = 50
    """Log loss, accuracy and throughput every this many steps."""
    label_batch_chunks: int = 512
    """Chunks per forward pass when ``jala token-predictor label`` predicts tokens."""

    def validate(self) -> None:
        for key in ("train_steps", "batch_chunks", "probe_chunks", "log_every", "label_batch_chunks"):
            require(getattr(self, key) > 0, f"token_predictor.{key}", "must be positive")
        require(self.lr > 0, "token_predictor.lr", "must be positive")
        require(self.weight_decay >= 0, "token_predictor.weight_decay", "must be >= 0")
        require(0.0 <= self.label_smoothing < 1.0, "token_predictor.label_smoothing", "must lie in [0, 1)")
