"""One tokenizer part: a Conv1D encoder that downsamples time, the GRVQ bottleneck, a Conv1D decoder.

Shapes for a batch of B chunks of one part with C pose dims (9 wrist, 90 fingers), padded to F frames:
``[B, F, C]`` -> encoder -> ``[B, F / downsample, latent_dim]`` -> GRVQ codes ``[B, steps, G, R]`` ->
decoder -> ``[B, F, C]``. Each downsampling halves time with a strided convolution (so ``downsample`` is a
power of two); the decoder mirrors it with nearest-neighbour upsampling and a convolution, which avoids the
checkerboard artefacts of transposed convolutions.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from jala_ds.motion.config import TokenizerConfig
from jala_ds.motion.quantizer import GroupedResidualQuantizer, QuantizerOutput


class ResidualBlock(nn.Module):
    """Pre-activation ``x + conv(act(conv(act(x))))`` over time, width preserved."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.SiLU(), nn.Conv1d(width, width, 3, padding=1),
                                  nn.SiLU(), nn.Conv1d(width, width, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def encoder(in_dim: int, width: int, latent_dim: int, halvings: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv1d(in_dim, width, 3, padding=1)]
    for _ in range(halvings):
        layers += [ResidualBlock(width), nn.Conv1d(width, width, 4, stride=2, padding=1)]
    layers += [ResidualBlock(width), nn.SiLU(), nn.Conv1d(width, latent_dim, 3, padding=1)]
    return nn.Sequential(*layers)


def decoder(latent_dim: int, width: int, out_dim: int, halvings: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv1d(latent_dim, width, 3, padding=1), ResidualBlock(width)]
    for _ in range(halvings):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(width, width, 3, padding=1),
                   ResidualBlock(width)]
    layers += [nn.SiLU(), nn.Conv1d(width, out_dim, 3, padding=1)]
    return nn.Sequential(*layers)


class PartAutoencoder(nn.Module):
    """Encoder, GRVQ and decoder of one part (wrist or fingers); inputs are normalised poses ``[B, F, C]``."""

    def __init__(self, dims: int, cfg: TokenizerConfig):
        super().__init__()
        halvings = int(math.log2(cfg.downsample))
        self.encoder = encoder(dims, cfg.conv_width, cfg.latent_dim, halvings)
        self.quantizer = GroupedResidualQuantizer(cfg.latent_dim, cfg.groups, cfg.stages, cfg.codes_per_stage,
                                                  cfg.ema_decay, cfg.dead_code_threshold)
        self.decoder = decoder(cfg.latent_dim, cfg.conv_width, dims, halvings)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """``[B, F, C]`` -> (reconstruction ``[B, F, C]``, quantizer output with codes ``[B * steps, G, R]``)."""
        latent = self.encoder(x.transpose(1, 2)).transpose(1, 2)          # [B, steps, latent_dim]
        quantized = self.quantizer(latent.reshape(-1, latent.shape[-1]))
        recon = self.decoder(quantized.quantized.view(latent.shape).transpose(1, 2)).transpose(1, 2)
        return recon, quantized

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, F, C]`` -> codes int64 ``[B, steps, G, R]``."""
        latent = self.encoder(x.transpose(1, 2)).transpose(1, 2)
        codes = self.quantizer.encode(latent.reshape(-1, latent.shape[-1]))
        return codes.view(latent.shape[0], latent.shape[1], *codes.shape[1:])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, steps, G, R]`` -> ``[B, F, C]``."""
        latent = self.quantizer.decode(codes.flatten(0, 1)).view(codes.shape[0], codes.shape[1], -1)
        return self.decoder(latent.transpose(1, 2)).transpose(1, 2)
