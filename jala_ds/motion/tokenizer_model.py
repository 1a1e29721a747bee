"""The GRVQ motion tokenizer as a torch module: both parts, pose normalisation, losses and the token layout.

A chunk of ``chunk_frames`` (15) frames is normalised per dimension with statistics of the training data,
padded to ``steps * downsample`` (16) frames by repeating its last frame, and split into the wrist part (dims
0:9) and the finger part (9:99), each with its own autoencoder and codebooks.

Token layout of one part (``tokens_per_part = steps * G * R`` tokens, 64 by default): the codes ``[steps, G, R]``
flattened in that order (step-major, then group, then stage), and the code of stage ``r`` offset by
``r * K`` so that each stage owns its slice of the part's vocabulary ``[0, R * K)``. A chunk's tokens are the
wrist part's, then the finger part's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jala_ds.motion.autoencoder import PartAutoencoder
from jala_ds.motion.config import TokenizerConfig
from jala_ds.motion.mano import FRAME_DIM, PART_SLICES


@dataclass
class TokenizerLosses:
    total: torch.Tensor
    reconstruction: torch.Tensor
    """MSE of the normalised poses over the real (unpadded) frames, averaged over the two parts."""
    velocity: torch.Tensor
    """MSE of frame-to-frame differences of the normalised poses, averaged over the parts."""
    commitment: torch.Tensor
    poses: torch.Tensor
    """The reconstruction ``[B, chunk_frames, 99]`` in pose units."""
    restarted: int
    """Codewords restarted by this step, both parts together."""


def codes_to_tokens(codes: torch.Tensor, codes_per_stage: int) -> torch.Tensor:
    """codes ``[B, steps, G, R]`` -> one part's tokens ``[B, steps * G * R]`` (stage r offset by r * K)."""
    offsets = torch.arange(codes.shape[-1], device=codes.device) * codes_per_stage
    return (codes + offsets).flatten(1)


def tokens_to_codes(tokens: torch.Tensor, cfg: TokenizerConfig) -> torch.Tensor:
    """Inverse of :func:`codes_to_tokens`: ``[B, tokens_per_part]`` -> codes ``[B, steps, G, R]``."""
    offsets = torch.arange(cfg.stages, device=tokens.device) * cfg.codes_per_stage
    return tokens.view(tokens.shape[0], cfg.steps, cfg.groups, cfg.stages) - offsets


class MotionTokenizerModel(nn.Module):
    """Poses ``[B, chunk_frames, 99]`` <-> tokens ``[B, tokens_per_chunk]``, trainable with :meth:`forward`."""

    def __init__(self, cfg: TokenizerConfig, chunk_frames: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.chunk_frames = chunk_frames
        self.padded_frames = cfg.steps * cfg.downsample
        if not 1 < chunk_frames <= self.padded_frames:
            raise ValueError(f"data.chunk_frames={chunk_frames} does not fit the tokenizer's {self.padded_frames} "
                             "padded frames: use 15-frame chunks (the paper's) or change motion_tokenizer.downsample")
        self.parts = nn.ModuleDict({name: PartAutoencoder(dims.stop - dims.start, cfg)
                                    for name, dims in PART_SLICES.items()})
        # Saved in the checkpoint's normalization.json, not with the weights.
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32), persistent=False)

    def normalize(self, poses: torch.Tensor) -> torch.Tensor:
        """``[B, chunk_frames, 99]`` -> normalised and padded ``[B, padded_frames, 99]``."""
        if poses.dim() != 3 or poses.shape[1:] != (self.chunk_frames, FRAME_DIM):
            raise ValueError(f"poses must be [B, {self.chunk_frames}, {FRAME_DIM}], got {tuple(poses.shape)}")
        x = (poses - self.mean) / self.std
        pad = self.padded_frames - self.chunk_frames
        return torch.cat([x, x[:, -1:].expand(-1, pad, -1)], dim=1)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :self.chunk_frames] * self.std + self.mean

    def forward(self, poses: torch.Tensor) -> TokenizerLosses:
        x = self.normalize(poses)
        recons = []
        losses = {"reconstruction": [], "velocity": [], "commitment": []}
        restarted = 0
        for name, dims in PART_SLICES.items():
            part_recon, quantized = self.parts[name](x[..., dims])
            recons.append(part_recon.detach())
            real, target = part_recon[:, :self.chunk_frames], x[:, :self.chunk_frames, dims]
            losses["reconstruction"].append(F.mse_loss(real, target))
            losses["velocity"].append(F.mse_loss(real.diff(dim=1), target.diff(dim=1)))
            losses["commitment"].append(quantized.commitment_loss)
            restarted += quantized.restarted
        mean = {key: torch.stack(values).mean() for key, values in losses.items()}
        total = (mean["reconstruction"] + self.cfg.velocity_weight * mean["velocity"]
                 + self.cfg.commitment_weight * mean["commitment"])
        poses_hat = self.denormalize(torch.cat(recons, dim=-1))
        return TokenizerLosses(total=total, poses=poses_hat, restarted=restarted, **mean)

    @torch.no_grad()
    def encode(self, poses: torch.Tensor) -> torch.Tensor:
        """``[B, chunk_frames, 99]`` -> tokens int64 ``[B, tokens_per_chunk]``, wrist part first."""
        x = self.normalize(poses)
        return torch.cat([codes_to_tokens(self.parts[name].encode(x[..., dims]), self.cfg.codes_per_stage)
                          for name, dims in PART_SLICES.items()], dim=1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[B, tokens_per_chunk]`` -> poses ``[B, chunk_frames, 99]``."""
        per_part = self.cfg.tokens_per_part
        parts = [self.parts[name].decode(tokens_to_codes(tokens[:, i * per_part:(i + 1) * per_part], self.cfg))
                 for i, name in enumerate(PART_SLICES)]
        return self.denormalize(torch.cat(parts, dim=-1))
