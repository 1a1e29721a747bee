"""The process group of the jobs that torchrun launches without DeepSpeed: the corpus conversion (``jala data
convert``), the tokenizer and token-predictor trainers, and the corpus copies (``jala data tokenize``,
``jala token-predictor label``).

    with torchrun_ranks() as ranks:          # one process: rank 0 of 1, no group
        model.to(ranks.device)               # cuda:LOCAL_RANK on a GPU node, else the CPU
        ...
        everyone = ranks.gather(mine)         # every rank's object, in rank order

A group that a caller already started (a test's, a notebook's) is used and left running; one started here is
ended here, after a barrier when the body succeeded, so that no rank leaves while another still needs it.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    device: torch.device
    """``cuda:LOCAL_RANK`` when the machine has GPUs, else the CPU."""

    def on(self, device: str) -> torch.device:
        """``device``, with a bare ``cuda`` meaning this rank's GPU; ``cuda`` without one is refused rather than
        quietly run on the CPU."""
        chosen = torch.device(device)
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is visible here: pass --device cpu")
        return self.device if chosen.type == "cuda" and chosen.index is None else chosen

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (picklable objects; small ones: counts, reports)."""
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


@contextmanager
def torchrun_ranks(timeout: timedelta | None = None) -> Iterator[Ranks]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (NCCL on GPUs, gloo on CPUs) and give this process'
    place in it. ``timeout``: how long a collective waits for the other ranks (torch's default when None)."""
    cuda = torch.cuda.is_available()
    ours = not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if ours:
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    ranks = Ranks(dist.get_rank() if dist.is_initialized() else 0,
                  dist.get_world_size() if dist.is_initialized() else 1, device)
    try:
        yield ranks
        if ours:
            ranks.barrier()
    finally:
        if ours:
            dist.destroy_process_group()
