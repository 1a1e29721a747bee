"""The Perceiver behind LAP (latent actions from (o_t, o_t+k)) and LSP (latent states from (o_t, o_t)).

One class, two instances. Each is M learnable ``queries`` plus a ``trunk``: ``layers`` x (cross-attention from
the latents to the frame-pair features, self-attention over the latents, MLP), then a 2-layer MLP into the VLM
width whose output channels are doubled and split into a left-hand and a right-hand head. The split into
``queries`` and ``trunk`` is what the decoupled EMA works on (LAP.trunk <- LSP.trunk, LSP.queries <- LAP.queries).

    lap = Perceiver(feature_dim=768, width=768, heads=12, layers=2, queries=16, out_dim=1536)
    z = lap(features, hand)        # features [C, 2, L, 768], hand [C] (0 left, 1 right) -> [C, 16, 1536]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FRAMES = 2
"""Both perceivers read a frame pair: LAP (o_t, o_t+k), LSP (o_t, o_t)."""


class Attention(nn.Module):
    """Multi-head attention from ``x`` to ``context`` (self-attention when they are the same tensor)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        def split(t: torch.Tensor) -> torch.Tensor:  # [C, L, W] -> [C, heads, L, W / heads]
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(context)), split(self.value(context)))
        return self.out(out.transpose(1, 2).flatten(-2))


class PerceiverLayer(nn.Module):
    """Pre-norm residual blocks: cross-attention to the features, self-attention over the latents, MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.cross_norm = nn.LayerNorm(width)
        self.feature_norm = nn.LayerNorm(width)
        self.cross = Attention(width, heads)
        self.self_norm = nn.LayerNorm(width)
        self.self_attention = Attention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        latents = latents + self.cross(self.cross_norm(latents), self.feature_norm(features))
        normed = self.self_norm(latents)
        latents = latents + self.self_attention(normed, normed)
        return latents + self.mlp(self.mlp_norm(latents))


class PerceiverTrunk(nn.Module):
    """Everything but the queries: feature projection, frame embedding, layers, and the two-hand head."""

    def __init__(self, feature_dim: int, width: int, heads: int, layers: int, out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.feature_proj = nn.Linear(feature_dim, width)
        # Cross-attention sees an unordered token set: without this the trunk could not tell o_t from o_t+k.
        self.frame_embedding = nn.Parameter(torch.zeros(FRAMES, width))
        nn.init.trunc_normal_(self.frame_embedding, std=0.02)
        self.layers = nn.ModuleList(PerceiverLayer(width, heads) for _ in range(layers))
        self.head_norm = nn.LayerNorm(width)
        self.head = nn.Sequential(nn.Linear(width, out_dim), nn.GELU(), nn.Linear(out_dim, 2 * out_dim))

    def forward(self, queries: torch.Tensor, features: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
        """queries ``[M, W]``, features ``[C, 2, L, D]``, hand ``[C]`` -> ``[C, M, out_dim]``."""
        if features.shape[1] != FRAMES:
            raise ValueError(f"the perceiver reads frame pairs: got {features.shape[1]} frames per chunk")
        tokens = (self.feature_proj(features) + self.frame_embedding[None, :, None]).flatten(1, 2)
        latents = queries.expand(features.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, tokens)
        both_hands = self.head(self.head_norm(latents)).unflatten(-1, (2, self.out_dim))  # [C, M, 2, out_dim]
        index = hand.view(-1, 1, 1, 1).expand(-1, latents.shape[1], 1, self.out_dim)
        return both_hands.gather(2, index).squeeze(2)


class Perceiver(nn.Module):
    """M learnable queries read a frame pair through the trunk: latent vectors ``[C, M, out_dim]`` per chunk."""

    def __init__(self, feature_dim: int, width: int, heads: int, layers: int, queries: int, out_dim: int):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(queries, width))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.trunk = PerceiverTrunk(feature_dim, width, heads, layers, out_dim)

    def forward(self, features: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.queries, features, hand)
