"""The dimensions that set JALA's FLOPs and parameter bytes, read from the same transformers configs the model builds.

``model_dims(cfg)`` takes the backbone config from ``jala_ds/model/backbone.py`` (or the checkpoint in
``model.pretrained``), the frame encoder's from ``model.visual_encoder_path`` (or the published shape of
``model.visual_encoder``, or the tiny random one for ``arch=tiny``), and the perceivers from the recipe.
``ModelDims`` is a plain dataclass, so any other shape can be written down directly.

Parameter counts are matrix and embedding-table entries; biases, norm scales and layer scales (< 0.2 % of
InternVL3-2B) are left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from jala_ds.config import JalaConfig

MOTION_SPECIAL_TOKENS = 3
"""``<mot>``, ``</mot>`` and ``[MASK]`` (``jala_ds/vocab.py``)."""
GATED_MLP_TYPES = frozenset({"qwen2", "qwen3", "llama", "mistral", "internlm2", "internlm3"})
"""Language-model families whose MLP is SwiGLU (gate, up and down matrices); their configs do not say so."""
VISION_TYPES = frozenset({"internvl_vision", "dinov2", "dinov2_with_registers", "dinov3_vit", "vjepa2"})
"""Encoders whose configs ``transformer_dims`` reads (plain or config-declared gated MLPs)."""


@dataclass(frozen=True)
class TransformerDims:
    """A stack of pre-norm transformer layers."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    gated_mlp: bool = False
    """SwiGLU-style MLP: three hidden x intermediate matrices instead of two."""

    @property
    def layer_params(self) -> int:
        attention = 2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        return attention + (3 if self.gated_mlp else 2) * self.hidden * self.intermediate

    @property
    def params(self) -> int:
        return self.layers * self.layer_params


@dataclass(frozen=True)
class ViTDims:
    """A vision transformer applied to one image (or one static clip) of ``image_size`` pixels a side."""

    encoder: TransformerDims
    image_size: int
    patch_size: int
    extra_tokens: int = 1
    """Class token plus register tokens (0 for V-JEPA2)."""
    tubelet: int = 1
    """Frames per patch: V-JEPA2 embeds 2-frame tubelets (a single frame is repeated to fill one)."""
    position_table: int = 0
    """Rows of a learned position-embedding table (0 for RoPE encoders)."""
    channels: int = 3

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        return self.patches + self.extra_tokens

    @property
    def patch_embed_params(self) -> int:
        return self.channels * self.tubelet * self.patch_size ** 2 * self.encoder.hidden

    @property
    def params(self) -> int:
        return self.encoder.params + self.patch_embed_params + self.position_table * self.encoder.hidden


@dataclass(frozen=True)
class VisionTowerDims:
    """InternVL's image path: ViT, pixel shuffle (``downsample`` per side), 2-layer MLP projector."""

    vit: ViTDims
    downsample: float
    lm_hidden: int

    @property
    def image_tokens(self) -> int:
        return int(self.vit.patches * self.downsample ** 2)

    @property
    def projector_in(self) -> int:
        return int(self.vit.encoder.hidden / self.downsample ** 2)

    @property
    def projector_params(self) -> int:
        return self.projector_in * self.lm_hidden + self.lm_hidden * self.lm_hidden


@dataclass(frozen=True)
class PerceiverDims:
    """LAP or LSP (``jala_ds/model/perceiver.py``): feature projection, layers of cross/self-attention + MLP, head."""

    feature_dim: int
    width: int
    heads: int
    layers: int
    queries: int
    out_dim: int
    mlp_ratio: int = 4

    @property
    def layer_params(self) -> int:
        return 8 * self.width ** 2 + 2 * self.mlp_ratio * self.width ** 2

    @property
    def params(self) -> int:
        head = self.width * self.out_dim + self.out_dim * 2 * self.out_dim
        return self.queries * self.width + self.feature_dim * self.width + self.layers * self.layer_params + head


@dataclass(frozen=True)
class ModelDims:
    """Everything a JALA training step multiplies: backbone, frame encoder and the two perceivers."""

    lm: TransformerDims
    vocab: int
    """Rows of the embedding and of the untied LM head: text vocabulary plus the motion tokens, rounded up to a
    multiple of 64 (``jala_ds/vocab.py``)."""
    vision: VisionTowerDims
    frame_encoder: ViTDims
    perceiver: PerceiverDims

    def params_by_part(self) -> dict[str, int]:
        """Parameter count per part (both perceivers together), in the order a sample flows through them."""
        return {"vision_tower": self.vision.vit.params, "projector": self.vision.projector_params,
                "language_model": self.lm.params + self.vocab * self.lm.hidden, "lm_head": self.vocab * self.lm.hidden,
                "frame_encoder": self.frame_encoder.params, "perceivers": 2 * self.perceiver.params}


def transformer_dims(config: PretrainedConfig) -> TransformerDims:
    """A ``TransformerDims`` from a transformers text or vision config (Qwen2, InternViT, DINOv2/v3, V-JEPA2)."""
    if config.model_type not in GATED_MLP_TYPES | VISION_TYPES:
        raise ValueError(f"no FLOP model for a '{config.model_type}' transformer: add its MLP kind to "
                         "GATED_MLP_TYPES or VISION_TYPES in jala_ds/bench/dims.py, or write ModelDims by hand")
    hidden, heads = config.hidden_size, config.num_attention_heads
    mlp_ratio = getattr(config, "mlp_ratio", None)
    intermediate = getattr(config, "intermediate_size", None) or int(hidden * mlp_ratio)
    gated = config.model_type in GATED_MLP_TYPES or bool(getattr(config, "use_gated_mlp", False)
                                                         or getattr(config, "use_swiglu_ffn", False))
    if getattr(config, "use_swiglu_ffn", False):  # DINOv2-giant: transformers shrinks the SwiGLU width by 2/3
        intermediate = (int(intermediate * 2 / 3) + 7) // 8 * 8
    return TransformerDims(hidden=hidden, layers=config.num_hidden_layers, heads=heads,
                           kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                           head_dim=getattr(config, "head_dim", None) or hidden // heads,
                           intermediate=intermediate, gated_mlp=gated)


def _side(value: int | list[int] | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, (list, tuple)) else value


def vit_dims(config: PretrainedConfig, image_size: int) -> ViTDims:
    """A ``ViTDims`` from an InternViT, DINOv2, DINOv3 or V-JEPA2 config, run at ``image_size`` pixels."""
    patch = _side(config.patch_size)
    is_video = config.model_type == "vjepa2"
    extra = 0 if is_video else 1 + getattr(config, "num_register_tokens", 0)
    learned = config.model_type in ("internvl_vision", "dinov2", "dinov2_with_registers")
    # A learned table keeps the size it was trained at (DINOv2: 518 px) and is interpolated to the input.
    table_side = _side(getattr(config, "image_size", image_size)) // patch
    return ViTDims(encoder=transformer_dims(config), image_size=image_size, patch_size=patch, extra_tokens=extra,
                   tubelet=getattr(config, "tubelet_size", 1) if is_video else 1,
                   position_table=table_side ** 2 + 1 if learned else 0)


def published_encoder_config(kind: str, image_size: int) -> PretrainedConfig:
    """The base-size encoders the paper names, as transformers configs (no weights): DINOv2-B/14, DINOv3-B/16,
    V-JEPA2-L/16."""
    import transformers

    base = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12}
    if kind == "dinov2":
        return transformers.Dinov2Config(image_size=518, patch_size=14, mlp_ratio=4, **base)
    if kind == "dinov3":
        return transformers.DINOv3ViTConfig(image_size=image_size, patch_size=16, intermediate_size=3072,
                                            num_register_tokens=4, **base)
    return transformers.VJEPA2Config(crop_size=image_size, patch_size=16, tubelet_size=2, hidden_size=1024,
                                     num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4)


def _local_config(folder: str | None) -> PretrainedConfig | None:
    if folder is None or not (Path(folder) / "config.json").is_file():
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, local_files_only=True)


def model_dims(cfg: JalaConfig) -> ModelDims:
    """The dimensions of the model ``cfg`` trains, from the checkpoints' configs where they are on this machine.

    Without ``model.pretrained`` the backbone is the shape ``backbone.py`` builds for ``model.arch``; without
    ``model.visual_encoder_path`` the frame encoder is the published base size of ``model.visual_encoder`` for
    ``internvl3_2b`` and the tiny random one for ``tiny``.
    """
    from jala_ds.model import backbone, visual_encoder
    from jala_ds.vocab import PUBLISHED_TEXT_VOCAB, byte_level_tokenizer, embedding_rows

    model = cfg.model
    internvl = _local_config(model.pretrained)
    if internvl is None:
        text_vocab = PUBLISHED_TEXT_VOCAB.get(model.arch) or len(byte_level_tokenizer())
        internvl = backbone.backbone_config(model.arch, model.image_size, text_vocab, image_token_id=0)
    encoder = _local_config(model.visual_encoder_path)
    if encoder is None:
        encoder = (published_encoder_config(model.visual_encoder, model.visual_encoder_image_size)
                   if model.arch == "internvl3_2b" else visual_encoder.random_encoder_config(model))
    lm = transformer_dims(internvl.text_config)
    vision = VisionTowerDims(vit=vit_dims(internvl.vision_config, _side(internvl.vision_config.image_size)),
                             downsample=internvl.downsample_ratio, lm_hidden=lm.hidden)
    perceiver = PerceiverDims(feature_dim=encoder.hidden_size, width=model.perceiver_width,
                              heads=model.perceiver_heads, layers=model.perceiver_layers,
                              queries=model.perceiver_queries, out_dim=lm.hidden)
    motion_rows = MOTION_SPECIAL_TOKENS + 2 * cfg.motion_tokenizer.vocab_per_part
    return ModelDims(lm=lm, vocab=embedding_rows(internvl.text_config.vocab_size + motion_rows), vision=vision,
                     frame_encoder=vit_dims(encoder, model.visual_encoder_image_size), perceiver=perceiver)
