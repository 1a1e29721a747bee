"""Model section: backbone, attention backend, perceivers, EMA and losses (every choice the paper leaves open)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jala_ds.config_checks import require


@dataclass
class ModelConfig:
    arch: Literal["tiny", "internvl3_2b"] = "tiny"
    """Shape of the backbone built from scratch: ``tiny`` (tests, CPU demo) or ``internvl3_2b`` (the paper's)."""
    pretrained: str | None = None
    """Local folder of an InternVL3 checkpoint in the transformers format; None builds ``arch`` at random."""
    image_size: int = 448
    """Input side of the VLM's vision tower."""
    attention: Literal["reference", "flex", "triton"] = "reference"
    """Chunk-mask attention backend of the language model: reference (SDPA + mask, anywhere), flex, triton."""
    objective: Literal["mcp", "ntp"] = "mcp"
    """``mcp``: masked chunk prediction with bidirectional chunks (JALA); ``ntp``: causal next-token (Being-H0)."""
    align: bool = True
    """Align predictive embeddings with LAP's latent actions; False is the paper's 'w/o align' row."""
    align_layer: int = 19
    """Transformer layer whose output hidden states are the predictive embeddings (19 of 28 in the paper)."""
    align_weight: float = 1.0
    """lambda in L = 1[labeled] L_MCP + lambda L_align."""
    align_distance: Literal["cosine", "mse"] = "cosine"
    """Distance between predictive embeddings and latent actions."""
    visual_encoder: Literal["dinov2", "dinov3", "vjepa2"] = "dinov2"
    """Frozen self-supervised encoder feeding the perceivers."""
    visual_encoder_path: str | None = None
    """Local checkpoint of the visual encoder; None builds a small random one (tests and the demo)."""
    visual_encoder_image_size: int = 224
    """Input side of the visual encoder."""
    perceiver_queries: int = 16
    """Learnable queries M of LAP/LSP; must divide the motion tokens of one hand's chunk."""
    perceiver_width: int = 512
    """Internal width of the perceiver trunk."""
    perceiver_heads: int = 8
    """Attention heads in the perceiver."""
    perceiver_layers: int = 2
    """Cross-attention + self-attention layers of the perceiver (2 in the paper)."""
    decoupled_ema: bool = True
    """Decoupled updates: LAP.trunk <- EMA(LSP.trunk), LSP.queries <- EMA(LAP.queries); False trains both jointly."""
    ema_tau: float = 0.999
    """EMA coefficient tau."""
    gradient_checkpointing: bool = False
    """Recompute language-model activations in the backward to save memory."""

    def validate(self) -> None:
        require(self.align_layer >= 1, "model.align_layer", "must be >= 1 (layer numbers start at 1)")
        require(self.align_weight >= 0.0, "model.align_weight", "must be >= 0")
        require(0.0 <= self.ema_tau < 1.0, "model.ema_tau", "must lie in [0, 1)")
        require(self.perceiver_queries > 0, "model.perceiver_queries", "must be positive")
        require(self.perceiver_width % self.perceiver_heads == 0, "model.perceiver_width",
                f"must be divisible by perceiver_heads={self.perceiver_heads}")
        require(not (self.objective == "ntp" and self.align), "model.objective",
                "ntp (Being-H0) is defined without alignment: also set model.align=false")
