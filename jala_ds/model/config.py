"""Model section: backbone, attention backend, perceivers, EMA and losses (every choice the paper leaves open)."""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Literal

from jala_ds.config_checks import require

LAYERS_BY_ARCH = {"tiny": 3, "internvl3_2b": 28, "internvl3_2b_narrow": 28}
"""Language-model layers of each backbone shape built from scratch (``model.align_layer`` must not exceed it)."""

VISUAL_ENCODER_CLASSES = {"dinov2": "Dinov2Model", "dinov3": "DINOv3ViTModel", "vjepa2": "VJEPA2Model"}
"""The transformers class behind each ``model.visual_encoder`` choice."""

IMAGE_GRID = 28
"""InternVL3 patches are 14 px and pixel shuffle merges 2 x 2 patches: image sides must be multiples of 28."""


@dataclass
class ModelConfig:
    arch: Literal["tiny", "internvl3_2b", "internvl3_2b_narrow"] = "tiny"
    """Shape of the backbone built from scratch: ``tiny`` (tests, CPU demo), ``internvl3_2b`` (the paper's), or
    ``internvl3_2b_narrow`` (the paper's depth at tiny width: a CPU proxy of the per-step host overhead)."""
    pretrained: str | None = None
    """Local folder of an InternVL3 checkpoint in the transformers format; None builds ``arch`` at random."""
    image_size: int = 448
    """Input side of the VLM's vision tower."""
    attention: Literal["reference", "flex", "triton"] = "reference"
    """Chunk-mask attention backend of the language model: reference (SDPA + mask, anywhere), flex, triton."""
    objective: Literal["mcp", "ntp"] = "mcp"
    """``mcp``: masked chunk prediction with bidirectional chunks (JALA); ``ntp``: causal next-token (Being-H0)."""
    align: bool = True
    """Align predictive embeddings with LAP's latent actions; False is the paper's 'w/o align' row (no LAP)."""
    align_layer: int = 19
    """Transformer layer whose output hidden states are the predictive embeddings (19 of 28 in the paper)."""
    align_weight: float = 1.0
    """lambda in L = 1[labeled] L_MCP + lambda L_align."""
    align_distance: Literal["cosine", "mse"] = "cosine"
    """Distance between predictive embeddings and latent actions."""
    lsp_context: bool = True
    """Add LSP's latent states to the chunk's motion-token embeddings; False with objective=ntp is Being-H0,
    True with objective=ntp is the paper's Being-H0+dino."""
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
    fused_ops: bool = False
    """Run the language model's RMSNorms, SwiGLU activations and rotary embeddings as fused Triton kernels on GPUs
    (``jala_ds/model/fused_lm_ops.py``); CPU tensors keep the eager arithmetic."""

    def validate(self) -> None:
        require(self.align_layer >= 1, "model.align_layer", "must be >= 1 (layer numbers start at 1)")
        require(self.pretrained is not None or self.align_layer <= LAYERS_BY_ARCH[self.arch], "model.align_layer",
                f"{self.align_layer} exceeds the {LAYERS_BY_ARCH[self.arch]} layers of arch={self.arch}")
        require(self.image_size > 0 and self.image_size % IMAGE_GRID == 0, "model.image_size",
                f"must be a positive multiple of {IMAGE_GRID} (14 px patches, 2 x 2 pixel shuffle), e.g. 448")
        require(self.visual_encoder_image_size >= 14, "model.visual_encoder_image_size", "must be at least 14 px")
        require(self.align_weight >= 0.0, "model.align_weight", "must be >= 0")
        require(0.0 <= self.ema_tau < 1.0, "model.ema_tau", "must lie in [0, 1)")
        require(self.perceiver_queries > 0, "model.perceiver_queries", "must be positive")
        require(self.perceiver_layers > 0, "model.perceiver_layers", "must be positive (the paper uses 2)")
        # Heads first: a zero would end the divisibility check below in a ZeroDivisionError traceback.
        require(self.perceiver_heads > 0, "model.perceiver_heads", "must be positive (the full recipe uses 12)")
        require(self.perceiver_width > 0 and self.perceiver_width % self.perceiver_heads == 0, "model.perceiver_width",
                f"must be a positive multiple of perceiver_heads={self.perceiver_heads}")
        require(not (self.objective == "ntp" and self.align), "model.objective",
                "ntp (Being-H0) is defined without alignment: also set model.align=false")
        require(not self.decoupled_ema or (self.align and self.lsp_context), "model.decoupled_ema",
                "the decoupled EMA pairs LAP with LSP: set model.decoupled_ema=false when model.align or "
                "model.lsp_context is false")
        require(self.attention != "triton" or importlib.util.find_spec("triton") is not None, "model.attention",
                "triton needs the triton package (it comes with CUDA builds of torch): install it, or use "
                "model.attention=reference")
        encoder_class = VISUAL_ENCODER_CLASSES[self.visual_encoder]
        require(self.visual_encoder == "dinov2" or _transformers_has(encoder_class), "model.visual_encoder",
                f"{self.visual_encoder} needs transformers.{encoder_class}, which this transformers version lacks: "
                "use model.visual_encoder=dinov2")

    def check_tokens_per_chunk(self, tokens_per_chunk: int) -> None:
        """The perceivers map latent m to the m-th of M equal segments of a chunk's motion tokens."""
        require(tokens_per_chunk % self.perceiver_queries == 0, "model.perceiver_queries",
                f"{self.perceiver_queries} does not divide the {tokens_per_chunk} motion tokens of a chunk: "
                f"pick a divisor of {tokens_per_chunk}")


def _transformers_has(class_name: str) -> bool:
    return hasattr(importlib.import_module("transformers"), class_name)
