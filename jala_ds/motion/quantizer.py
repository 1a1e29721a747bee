"""The GRVQ bottleneck of a tokenizer part: codebooks learned by EMA statistics, dead codes restarted.

Forward: ``jala_kernels.grvq_encode`` finds the codes (the fused Triton kernel on GPUs); the encoder learns
through a straight-through estimator (``z + (q - z).detach()``) plus a commitment loss. The codebooks take no
gradient: after each training forward, every codeword moves to the EMA mean of the vectors assigned to it
(counts and sums kept in fp32; under data parallelism the batch statistics are all-reduced first, so every rank
holds the same codebooks). A codeword whose EMA count falls below ``dead_code_threshold`` is restarted on a
random input of its stage from the current batch, chosen on rank 0 and broadcast.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from jala_kernels import grvq_decode, grvq_encode

LAPLACE_EPS = 1e-5
"""Additive smoothing of the EMA counts, so that a code with no assignments never divides by zero."""


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor
    """``[N, D]`` straight-through: the quantized values forward, the identity backward."""
    codes: torch.Tensor
    """int64 ``[N, G, R]``."""
    commitment_loss: torch.Tensor
    """MSE between the encoder output and its (detached) quantized value."""
    restarted: int
    """Codewords restarted by this call (0 outside training)."""


class GroupedResidualQuantizer(nn.Module):
    """``dim`` features split into ``groups``, each quantized by ``stages`` residual codebooks of ``codes``."""

    def __init__(self, dim: int, groups: int, stages: int, codes: int, ema_decay: float, dead_code_threshold: float):
        super().__init__()
        if dim % groups:
            raise ValueError(f"latent dim {dim} is not divisible by groups={groups}")
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        shape = (groups, stages, codes, dim // groups)
        self.register_buffer("codebooks", torch.randn(shape))
        # Counts start at zero, so the first training step puts every codeword on the data: the mean of the
        # inputs that chose it, or (with restarts on) a random input when none did.
        self.register_buffer("ema_counts", torch.zeros(shape[:3]))
        self.register_buffer("ema_sums", torch.zeros(shape))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        codes, quantized = grvq_encode(z.detach().float(), self.codebooks)
        restarted = self.update_codebooks(z.detach().float(), codes) if self.training else 0
        quantized = quantized.to(z.dtype)
        commitment = F.mse_loss(z, quantized)
        return QuantizerOutput(z + (quantized - z).detach(), codes, commitment, restarted)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` -> codes int64 ``[N, G, R]``, codebooks untouched."""
        return grvq_encode(z.detach().float(), self.codebooks)[0]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return grvq_decode(codes, self.codebooks)

    def stage_inputs(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``[G, R, N, D // G]``: the residual each stage quantized (what its chosen codeword approximates)."""
        groups, stages, _, group_dim = self.codebooks.shape
        residual = z.view(-1, groups, group_dim)
        group_index = torch.arange(groups, device=z.device)[None, :]
        inputs = []
        for stage in range(stages):
            inputs.append(residual.transpose(0, 1))
            residual = residual - self.codebooks[:, stage][group_index, codes[:, :, stage]]
        return torch.stack(inputs, dim=1)

    @torch.no_grad()
    def update_codebooks(self, z: torch.Tensor, codes: torch.Tensor) -> int:
        """One EMA step of counts and sums, codewords set to their means, dead codes restarted; returns restarts."""
        groups, stages, k, group_dim = self.codebooks.shape
        inputs = self.stage_inputs(z, codes)
        slot = torch.arange(groups * stages, device=z.device).view(groups, stages, 1) * k
        flat = (slot + codes.permute(1, 2, 0)).flatten()
        counts = torch.bincount(flat, minlength=groups * stages * k).float()
        sums = torch.zeros(groups * stages * k, group_dim, device=z.device)
        sums.index_add_(0, flat, inputs.reshape(-1, group_dim))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_counts.mul_(self.ema_decay).add_(counts.view(groups, stages, k), alpha=1 - self.ema_decay)
        self.ema_sums.mul_(self.ema_decay).add_(sums.view(self.ema_sums.shape), alpha=1 - self.ema_decay)
        total = self.ema_counts.sum(dim=-1, keepdim=True)
        smoothed = (self.ema_counts + LAPLACE_EPS) / (total + k * LAPLACE_EPS) * total
        self.codebooks.copy_(self.ema_sums / smoothed.clamp_min(LAPLACE_EPS)[..., None])
        return self.restart_dead_codes(inputs)

    def restart_dead_codes(self, inputs: torch.Tensor) -> int:
        """Move each codeword whose EMA count fell below the threshold onto a random input of its stage."""
        if self.dead_code_threshold <= 0:
            return 0
        dead = self.ema_counts < self.dead_code_threshold
        count = int(dead.sum())
        if count == 0:
            return 0
        group, stage, code = dead.nonzero(as_tuple=True)
        picks = torch.randint(0, inputs.shape[2], (count,), device=inputs.device)
        self.codebooks[group, stage, code] = inputs[group, stage, picks]
        # The restarted code counts as freshly used at the threshold: unless real inputs pick it next step, it
        # stays dead and moves again.
        self.ema_counts[group, stage, code] = self.dead_code_threshold
        self.ema_sums[group, stage, code] = inputs[group, stage, picks] * self.dead_code_threshold
        if dist.is_available() and dist.is_initialized():
            for buffer in (self.codebooks, self.ema_counts, self.ema_sums):
                dist.broadcast(buffer, src=0)
        return count
