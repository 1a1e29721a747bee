"""Training metrics between two log steps: losses, throughput and MFU, averaged over every rank, and the
largest peak memory of any rank.

Sums stay on the device until a log step (no host sync per micro-batch); then one all-reduce brings every
rank's sums together, so the logged loss is the mean over all ranks, not rank 0's alone.
"""
from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

LOSSES = ("loss", "mcp_loss", "align_loss")
LOSS_WEIGHTS = {"mcp_loss": "n_mcp_tokens"}
"""Losses logged as a mean over what they average (the output field that counts it), not over micro-batches: the
MCP loss per labelled token, so that a micro-batch without one adds no 0 and one with 3 weighs 3/3000 of one
with 3000. ``loss`` stays the mean of what was back-propagated."""


class StepMetrics:
    """Accumulates micro-batches; ``flush`` returns the window's metrics (a collective: every rank calls it)."""

    def __init__(self, device: torch.device, *, losses: tuple[str, ...] = LOSSES, flops_per_sample: float | None,
                 peak_flops: float | None):
        self.device = device
        self.losses = losses
        self.flops_per_sample = flops_per_sample
        self.peak_flops = peak_flops
        self.reset()

    def reset(self) -> None:
        # each loss's weighted sum, each loss's weight, tokens, samples, skipped optimiser steps
        self.sums = torch.zeros(2 * len(self.losses) + 3, dtype=torch.float64, device=self.device)
        self.started = time.perf_counter()

    def add(self, out: Any, batch: dict[str, Any]) -> None:
        """One micro-batch: the model's output (``JalaOutput`` or ``PolicyOutput``) and the batch it saw."""
        weights = [getattr(out, LOSS_WEIGHTS[name]) if name in LOSS_WEIGHTS else 1 for name in self.losses]
        losses = [getattr(out, name).detach().double() * weight for name, weight in zip(self.losses, weights)]
        tokens = (batch["doc_ids"] >= 0).sum().double()
        one = torch.ones((), dtype=torch.float64, device=self.device)  # host numbers times it: no copy, no wait
        self.sums[:-1] += torch.stack([*losses, *(one * weight for weight in weights), tokens,
                                       one * len(batch["sample_ids"])])

    def add_step(self, skipped: torch.Tensor | float) -> None:
        """One optimiser step: 1 if it was skipped (inf/NaN gradients), else 0; a device tensor stays unread."""
        self.sums[-1] += skipped

    def flush(self, *, lr: float, grad_norm: float | None) -> dict[str, float]:
        dist.all_reduce(self.sums)
        # The rank closest to running out sets what a run can afford: the largest peak, not the mean.
        peak = torch.tensor([peak_memory_gb(self.device)], dtype=torch.float64, device=self.device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        elapsed = time.perf_counter() - self.started
        *loss_sums, tokens, samples, skipped = self.sums.tolist()
        losses = zip(self.losses, loss_sums[:len(self.losses)], loss_sums[len(self.losses):])
        # A window without labelled tokens logs no MCP loss rather than a made-up one.
        metrics = {name: total / weight for name, total, weight in losses if weight > 0}
        metrics.update(lr=lr, samples_per_s=samples / elapsed, tokens_per_s=tokens / elapsed,
                       skipped_steps=skipped / dist.get_world_size(),  # every rank skips the same steps
                       peak_memory_gb=peak.item())
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        self.reset()
        if self.flops_per_sample is None:
            return metrics
        flops_per_s = self.flops_per_sample * samples / elapsed / dist.get_world_size()
        metrics["tflops_per_device"] = flops_per_s / 1e12
        if self.peak_flops:
            metrics["mfu"] = flops_per_s / self.peak_flops
        return metrics


def peak_memory_gb(device: torch.device) -> float:
    """The most memory this process has held so far: tensors allocated on a CUDA ``device`` (a host-side
    counter, no wait for the device); on a CPU the process's peak resident set, which also counts Python and
    its libraries (Linux reports KiB, macOS bytes)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9
