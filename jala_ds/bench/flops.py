"""Model FLOPs of one JALA training sample, part by part, and MFU against a card's bf16 peak.

What is counted (``docs/performance.md`` has the reasoning and the InternVL3-2B numbers):

- every matrix multiply at 2 FLOPs per multiply-add; norms, activations, softmax, RoPE and the optimiser are
  left out (they are memory-bound and well under 1 %), and so is the embedding lookup (a gather);
- attention as QK^T plus PV over the (query, key) pairs that are visible: the chunk mask for the language model,
  all pairs for the ViTs; a kernel that skips masked tiles does not do more than this, a dense one does;
- the LM head only at the positions that carry a loss (masked motion tokens of labelled samples), because
  logits anywhere else are never used: an implementation that computes them does extra work, not model work;
- passes: 3 forwards for a trained part (forward, input gradient, weight gradient), 2 for LAP under the
  decoupled EMA (its trunk takes no weight gradient, but the query gradient flows back through it), 1 for the
  frozen frame encoder at the input; activation recomputation is hardware work, not model work.

    count = recipe_flops(cfg)           # = count_flops(dims, sample_shape(cfg, dims)) with dims = model_dims(cfg)
    count.per_sample                    # ~7.1e12 for the InternVL3-2B recipe's 576-token sample
    mfu(count.per_sample, samples_per_s=40.0, n_gpus=8, card="a800")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from jala_ds.bench import cards
from jala_ds.bench.dims import ModelDims, PerceiverDims, TransformerDims, ViTDims, model_dims

if TYPE_CHECKING:
    from jala_ds.config import JalaConfig

TYPICAL_TEXT_TOKENS = 60
"""Instruction tokens of a typical sample plus ``<img>`` and ``</img>`` (DESIGN.md's ~60)."""
PAPER_LAB_SHARE = 5.0 / 7.5
"""Share of UniHand-Mix with motion labels (5M lab of 7.5M); wild pseudo labels are counted as unlabelled."""
FRAMES_PER_CHUNK = 2
"""Each perceiver reads two frames' features per chunk: LAP (o_t, o_t+k), LSP (o_t, o_t)."""


@dataclass(frozen=True)
class SampleShape:
    """What one training sample (corpus average) puts through the model."""

    image_tokens: int
    """``<IMG_CONTEXT>`` tokens of the sample's one image (256 at 448 px)."""
    text_tokens: int
    """Instruction tokens plus the two image delimiters."""
    chunks: int
    """Motion chunks, both hands together."""
    frames: int
    """Distinct boundary frames, each encoded once by the frame encoder: both hands' chunks at a step share
    their pair, and a chunk's last frame is the next one's first."""
    chunk_tokens: int
    """Motion codes of one chunk (between ``<mot>`` and ``</mot>``)."""
    loss_tokens: float
    """Positions that carry a loss, averaged over the corpus (video-only samples have none)."""
    bidirectional_chunks: bool = True
    """MCP's mask (tokens of a chunk see each other); False is plain causal (objective=ntp)."""

    @property
    def lm_tokens(self) -> int:
        return self.image_tokens + self.text_tokens + self.chunks * (self.chunk_tokens + 2)

    @property
    def attended_pairs(self) -> int:
        """Visible (query, key) pairs of the chunk mask: causal, plus the later keys a chunk token also sees."""
        n = self.lm_tokens
        inside = self.chunk_tokens * (self.chunk_tokens - 1) // 2 if self.bidirectional_chunks else 0
        return n * (n + 1) // 2 + self.chunks * inside


def sample_shape(cfg, dims: ModelDims, text_tokens: int | None = None) -> SampleShape:
    """The average sample of recipe ``cfg``: one image, both hands' chunks, the expected MCP-masked tokens.

    MCP masks the target chunk (chosen uniformly among the sample's chunks) at a ratio drawn uniformly from
    ``[mask_ratio_min, mask_ratio_max]`` and each later chunk's tokens with ``later_chunk_mask_prob``; on average
    (chunks - 1) / 2 chunks come after the target. ``ntp`` puts a loss on every motion token instead.
    """
    data, tokenizer = cfg.data, cfg.motion_tokenizer
    chunks = 2 * data.max_chunks
    per_chunk = tokenizer.tokens_per_chunk
    if cfg.model.objective == "mcp":
        ratio = (data.mask_ratio_min + data.mask_ratio_max) / 2
        labelled_loss = per_chunk * (ratio + data.later_chunk_mask_prob * (chunks - 1) / 2)
    else:
        labelled_loss = chunks * per_chunk
    share = 1.0 if data.labeled_only else (data.lab_proportion if data.lab_proportion is not None else PAPER_LAB_SHARE)
    text = min(TYPICAL_TEXT_TOKENS, data.max_text_tokens + 2) if text_tokens is None else text_tokens
    return SampleShape(image_tokens=dims.vision.image_tokens, text_tokens=text, chunks=chunks,
                       frames=data.max_chunks + 1, chunk_tokens=per_chunk, loss_tokens=share * labelled_loss,
                       bidirectional_chunks=cfg.model.objective == "mcp")


@dataclass(frozen=True)
class PartFlops:
    """One part of the model: its forward FLOPs per sample and how many forward-equivalents training costs."""

    name: str
    forward: float
    passes: int
    note: str

    @property
    def train(self) -> float:
        return self.forward * self.passes


@dataclass(frozen=True)
class FlopCount:
    """Training FLOPs of one sample, itemised."""

    parts: tuple[PartFlops, ...]
    shape: SampleShape

    @property
    def per_sample(self) -> float:
        return sum(part.train for part in self.parts)

    def rows(self) -> list[dict[str, object]]:
        """One row per part for a table: forward and training GFLOP, passes, share of the total, note."""
        total = self.per_sample
        return [{"part": p.name, "forward GFLOP": p.forward / 1e9, "passes": p.passes,
                 "train GFLOP": p.train / 1e9, "share": f"{p.train / total:.1%}", "what": p.note}
                for p in self.parts]


def transformer_flops(dims: TransformerDims, tokens: float, attended_pairs: float) -> float:
    """Forward FLOPs of a transformer stack: its matmuls on every token, QK^T and PV on the visible pairs."""
    return 2 * dims.params * tokens + 4 * dims.layers * dims.heads * dims.head_dim * attended_pairs


def vit_flops(vit: ViTDims) -> float:
    """Forward FLOPs of one ViT pass: patch embedding, then full bidirectional attention over its tokens."""
    return 2 * vit.patch_embed_params * vit.patches + transformer_flops(vit.encoder, vit.tokens, vit.tokens ** 2)


def perceiver_flops(p: PerceiverDims, feature_tokens: int) -> float:
    """Forward FLOPs of LAP or LSP on one chunk's frame-pair features (``feature_tokens`` of them)."""
    m, w = p.queries, p.width
    cross = 2 * m * w * w * 2 + 2 * feature_tokens * w * w * 2 + 4 * m * feature_tokens * w
    self_attention = 2 * m * w * w * 4 + 4 * m * m * w
    mlp = 2 * m * w * p.mlp_ratio * w * 2
    head = 2 * m * (w * p.out_dim + p.out_dim * 2 * p.out_dim)
    return 2 * feature_tokens * p.feature_dim * w + p.layers * (cross + self_attention + mlp) + head


def count_flops(dims: ModelDims, shape: SampleShape, *, vision_trained: bool = True, align: bool = True,
                lsp_context: bool = True, decoupled_ema: bool = True) -> FlopCount:
    """Itemised training FLOPs of one sample of ``shape`` through a model of ``dims``.

    ``align=False`` drops LAP, ``lsp_context=False`` drops LSP (the paper's ablation rows); ``vision_trained``
    says whether the InternViT tower takes gradients (it does in pretraining unless a recipe freezes it).
    """
    vision, lm = dims.vision, dims.lm
    features = FRAMES_PER_CHUNK * dims.frame_encoder.tokens
    perceiver = shape.chunks * perceiver_flops(dims.perceiver, features)
    parts = [
        PartFlops("vision tower", vit_flops(vision.vit), 3 if vision_trained else 1,
                  f"InternViT on {vision.vit.tokens} tokens ({vision.vit.image_size} px)"),
        PartFlops("projector", 2 * vision.projector_params * vision.image_tokens, 3,
                  f"pixel shuffle -> {vision.image_tokens} tokens, 2-layer MLP"),
        PartFlops("LM matmuls", 2 * lm.params * shape.lm_tokens, 3,
                  f"{lm.layers} layers on {shape.lm_tokens} tokens"),
        PartFlops("LM attention", transformer_flops(lm, 0, shape.attended_pairs), 3,
                  f"{shape.attended_pairs} visible pairs of the chunk mask"),
        PartFlops("LM head", 2 * lm.hidden * dims.vocab * shape.loss_tokens, 3,
                  f"{dims.vocab} rows at {shape.loss_tokens:.1f} loss positions"),
        PartFlops("frame encoder", shape.frames * vit_flops(dims.frame_encoder), 1,
                  f"frozen, {shape.frames} frames of {dims.frame_encoder.tokens} tokens"),
    ]
    if lsp_context:
        parts.append(PartFlops("LSP", perceiver, 3, "perceiver on (o_t, o_t), trunk trained"))
    if align:
        parts.append(PartFlops("LAP", perceiver, 2 if decoupled_ema else 3,
                               "perceiver on (o_t, o_t+k); EMA trunk: no weight gradient" if decoupled_ema
                               else "perceiver on (o_t, o_t+k), trained jointly"))
    return FlopCount(parts=tuple(parts), shape=shape)


def recipe_flops(cfg: JalaConfig, text_tokens: int | None = None, vision_trained: bool = True,
                 dims: ModelDims | None = None) -> FlopCount:
    """``count_flops`` for the model (``dims``, default ``model_dims(cfg)``) and average sample of recipe ``cfg``."""
    dims = dims or model_dims(cfg)
    model = cfg.model
    return count_flops(dims, sample_shape(cfg, dims, text_tokens), vision_trained=vision_trained,
                       align=model.align, lsp_context=model.lsp_context, decoupled_ema=model.decoupled_ema)


def mfu(flops_per_sample: float, samples_per_s: float, n_gpus: int, card: str | cards.Card) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over ``n_gpus`` cards' dense bf16 peak (a fraction)."""
    if flops_per_sample <= 0 or samples_per_s < 0 or n_gpus < 1:
        raise ValueError(f"mfu needs flops_per_sample > 0, samples_per_s >= 0 and n_gpus >= 1, got "
                         f"{flops_per_sample}, {samples_per_s}, {n_gpus}")
    return flops_per_sample * samples_per_s / (n_gpus * cards.card(card).bf16_tflops * 1e12)
