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
        # each loss, micro-batches, tokens, samples, skipped optimiser steps
        self.sums = torch.zeros(len(self.losses) + 4, dtype=torch.float64, device=self.device)
        self.started = time.perf_counter()

    def add(self, out: Any, batch: dict[str, Any]) -> None:
        """One micro-batch: the model's output (``JalaOutput`` or ``PolicyOutput``) and the batch it saw."""
        losses = [getattr(out, name).detach().double() for name in self.losses]
        tokens = (batch["doc_ids"] >= 0).sum().double()
        one = torch.ones((), dtype=torch.float64, device=self.device)
        self.sums[:-1] += torch.stack([*losses, one, tokens, one * len(batch["sample_ids"])])

    def add_step(self, skipped: torch.Tensor | float) -> None:
        """One optimiser step: 1 if it was skipped (inf/NaN gradients), else 0; a device tensor stays unread."""
        self.sums[-1] += skipped

    def flush(self, *, lr: float, grad_norm: float | None) -> dict[str, float]:
        dist.all_reduce(self.sums)
        # The rank closest to running out sets what a run can afford: the largest peak, not the mean.
        peak = torch.tensor([peak_memory_gb(self.device)], dtype=torch.float64, device=self.device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        elapsed = time.perf_counter() - self.started
        *loss_sums, micro_batches, tokens, samples, skipped = self.sums.tolist()
        metrics = {name: total / micro_batches for name, total in zip(self.losses, loss_sums)}
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
