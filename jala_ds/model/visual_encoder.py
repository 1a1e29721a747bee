"""The frozen self-supervised ViT whose features feed LAP and LSP (DINOv2, DINOv3 or V-JEPA2 via transformers).

Every frame is encoded on its own, so one encoder pass serves both perceivers: LAP reads the features of
(o_t, o_t+k), LSP those of (o_t, o_t). V-JEPA2 is a video model; a single frame is a static clip for it (its
tubelet repeats the frame), which keeps one code path for all three encoders.

    encoder = build_visual_encoder(cfg.model)       # random tiny encoder, or model.visual_encoder_path
    features = encoder(batch["encoder_frames"])       # [F, L, hidden_size], no gradient
    pairs = features[batch["chunk_frame_index"]]      # [C, 2, L, hidden_size]: each chunk's (o_t, o_t+k)
"""
from __future__ import annotations

import torch
import transformers
from torch import nn

from jala_ds.data.frames import normalized
from jala_ds.model.config import VISUAL_ENCODER_CLASSES, ModelConfig

TINY_WIDTH = 32
"""Hidden size of the random encoders built for tests and the demo."""
FULL_DEPTH_LAYERS = 12
"""Layers of the base-size encoders the full recipe loads (DINOv2-B/14, DINOv3-B/16)."""


def tiny_encoder_config(kind: str, image_size: int, layers: int = 2) -> transformers.PretrainedConfig:
    """A small random config of encoder ``kind`` (patch 14, ``layers`` layers) for tests and the CPU demo."""
    shape = {"hidden_size": TINY_WIDTH, "num_hidden_layers": layers, "num_attention_heads": 2, "patch_size": 14}
    if kind == "dinov2":
        return transformers.Dinov2Config(image_size=image_size, mlp_ratio=2, **shape)
    if kind == "dinov3":
        return transformers.DINOv3ViTConfig(image_size=image_size, intermediate_size=2 * TINY_WIDTH,
                                            num_register_tokens=2, **shape)
    return transformers.VJEPA2Config(crop_size=image_size, frames_per_clip=2, tubelet_size=2, mlp_ratio=2,
                                     pred_hidden_size=16, pred_num_attention_heads=2, pred_num_hidden_layers=1,
                                     **shape)


class FrozenFrameEncoder(nn.Module):
    """Per-frame features of a frozen encoder; stays in eval mode and never takes gradients."""

    def __init__(self, encoder: transformers.PreTrainedModel, kind: str):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.kind = kind
        self.hidden_size = encoder.config.hidden_size

    def train(self, mode: bool = True) -> FrozenFrameEncoder:
        # A frozen encoder keeps its eval behaviour (no dropout, no drop-path) when the whole model trains.
        return super().train(False)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``frames [..., 3, s, s]`` -> ``[..., L, hidden_size]``, each frame on its own."""
        flat = normalized(frames.flatten(0, -4), self.encoder.dtype)
        if self.kind == "vjepa2":
            tokens = self.encoder(pixel_values_videos=flat[:, None], skip_predictor=True).last_hidden_state
        else:
            tokens = self.encoder(pixel_values=flat).last_hidden_state
        return tokens.unflatten(0, frames.shape[:-3])


def random_encoder_config(model_cfg: ModelConfig) -> transformers.PretrainedConfig:
    """The config of the random encoder built without ``model.visual_encoder_path``: tiny width, two layers, or
    DINOv2-base's twelve for ``arch=internvl3_2b_narrow`` (the host-overhead proxy keeps every depth)."""
    layers = FULL_DEPTH_LAYERS if model_cfg.arch == "internvl3_2b_narrow" else 2
    return tiny_encoder_config(model_cfg.visual_encoder, model_cfg.visual_encoder_image_size, layers)


def build_visual_encoder(model_cfg: ModelConfig) -> FrozenFrameEncoder:
    """The encoder named by ``model.visual_encoder``: loaded from ``model.visual_encoder_path`` or random tiny."""
    kind = model_cfg.visual_encoder
    expected = getattr(transformers, VISUAL_ENCODER_CLASSES[kind])
    if model_cfg.visual_encoder_path is None:
        return FrozenFrameEncoder(expected(random_encoder_config(model_cfg)), kind)
    encoder, info = transformers.AutoModel.from_pretrained(model_cfg.visual_encoder_path, local_files_only=True,
                                                           output_loading_info=True)
    # transformers only logs the weights it initialised at random: a frozen encoder would keep them for the whole
    # run. V-JEPA2's predictor is never run here (skip_predictor), so a checkpoint without it is complete.
    missing = sorted(key for key in info["missing_keys"] if not (kind == "vjepa2" and key.startswith("predictor.")))
    if missing:
        raise ValueError(f"model.visual_encoder_path={model_cfg.visual_encoder_path} lacks weights of its "
                         f"{type(encoder).__name__} ({missing[:4]}{' ...' if len(missing) > 4 else ''}), which would "
                         "start at random and stay frozen: point it at a complete checkpoint of the encoder")
    if not isinstance(encoder, expected):
        raise TypeError(f"model.visual_encoder_path={model_cfg.visual_encoder_path} holds a "
                        f"{type(encoder).__name__}, not the {expected.__name__} that model.visual_encoder={kind} "
                        "needs: point it at a matching checkpoint or change model.visual_encoder")
    patch = encoder.config.patch_size
    if model_cfg.visual_encoder_image_size % patch:
        raise ValueError(f"model.visual_encoder_image_size={model_cfg.visual_encoder_image_size} is not a multiple "
                         f"of the encoder's {patch} px patches: use e.g. {patch * 16}")
    return FrozenFrameEncoder(encoder, kind)
