"""The two JALA losses: masked chunk prediction (eq. 2) and alignment of predictive embeddings (eq. 3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mcp_loss(final_hidden: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor, lm_head: nn.Module,
             vocab_size: int) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the labelled ``positions`` (flat indices into ``labels``: those not -100), and
    their count.

    The LM head runs only at those positions (the vocabulary has ~160k rows). The collate finds them on the host
    (``batch["label_positions"]``), so the count is a shape, not a value the host must wait for. The softmax is
    over the first ``vocab_size`` logits: the head's rows past it (``MotionVocab.rows``) stand for no token.
    With no labelled position (a video-only batch) the loss is an exact 0 that is still connected to the graph,
    so every rank runs the same backward under DeepSpeed and the head receives a zero gradient.
    """
    logits = lm_head(final_hidden.flatten(0, 1)[positions])[:, :vocab_size].float()
    total = F.cross_entropy(logits, labels.flatten()[positions], reduction="sum")
    count = positions.numel()
    return total / max(count, 1), count


def segment_mean(tokens: torch.Tensor, segments: int) -> torch.Tensor:
    """``[C, T, d]`` -> ``[C, M, d]``: mean of each of M contiguous segments of T / M tokens."""
    return tokens.unflatten(1, (segments, -1)).mean(dim=2)


def align_loss(predictive: torch.Tensor, latent_actions: torch.Tensor, distance: str) -> torch.Tensor:
    """Distance between the predictive embeddings pooled to M per chunk and LAP's M latent actions.

    predictive ``[C, T, d]``, latent_actions ``[C, M, d]``. Gradients reach both sides (docs/method.md:
    the VLM learns from it, and so do LAP's queries; LAP's trunk is frozen and follows LSP by EMA).
    """
    pooled = segment_mean(predictive.float(), latent_actions.shape[1])
    target = latent_actions.float()
    if distance == "cosine":
        return (1.0 - F.cosine_similarity(pooled, target, dim=-1)).mean()
    return F.mse_loss(pooled, target)
