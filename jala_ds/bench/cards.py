"""The GPUs we plan for: dense bf16 peak, memory, and the bandwidth of the links ZeRO-3 talks over.

Peaks are the vendors' dense (no structured sparsity) bf16 tensor-core figures; MFU is always relative to
them. Link figures are per GPU and per direction (vendors quote NVLink both ways added: 600 GB/s on an
A100 is 300 GB/s each way), because a ring collective's time is set by one direction of each link.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Card:
    """One accelerator model as the planner sees it."""

    name: str
    bf16_tflops: float
    """Dense bf16 tensor-core peak, TFLOP/s."""
    memory_gb: int
    """HBM capacity."""
    hbm_tb_s: float
    """HBM bandwidth, TB/s (the optimiser step is bound by it)."""
    link_gb_s: float
    """Intra-node GPU-to-GPU bandwidth per GPU, one direction, GB/s (NVLink, or PCIe where there is none)."""


CARDS: dict[str, Card] = {card.name: card for card in (
    Card("a100", 312.0, 80, 2.04, 300.0),
    # A800 / H800: the export versions, same compute as A100 / H100 with NVLink cut to 400 GB/s both ways.
    Card("a800", 312.0, 80, 2.04, 200.0),
    Card("h100", 989.0, 80, 3.35, 450.0),
    Card("h100-pcie", 756.0, 80, 2.0, 64.0),
    Card("h800", 989.0, 80, 3.35, 200.0),
    Card("h200", 989.0, 141, 4.8, 450.0),
    Card("h20", 148.0, 96, 4.0, 450.0),
    Card("l40s", 362.0, 48, 0.864, 32.0),
    Card("b200", 2250.0, 180, 8.0, 900.0),
    Card("mi300x", 1307.0, 192, 5.3, 448.0),
)}


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def card(name: str | Card, *, exact: bool = False) -> Card:
    """The card called ``name`` (``a800``), or the one a device string names (``NVIDIA H100 80GB HBM3``).

    Longer names are tried first so that ``H100 PCIe`` is not read as ``H100``, nor ``H200`` as ``H20``.
    ``exact``: ``name`` must be a card's name (a user's flag: ``a100-40gb`` is not the 80 GB ``a100``).
    """
    if isinstance(name, Card):
        return name
    squashed = _squash(name)
    for key in sorted(CARDS, key=len, reverse=True):
        if squashed == _squash(key) or (not exact and _squash(key) in squashed):
            return CARDS[key]
    raise ValueError(f"unknown GPU '{name}': use one of {', '.join(CARDS)} (MFU needs a card's bf16 peak)")
