"""The post-training action head: a flow-matching Diffusion Transformer on the backbone's predictive embeddings.

Paper section 4.4. Tokens are one state token (the proprioceptive state through an MLP) and H action tokens (the
noised action chunk, one token per step), each with a learned position embedding. ``layers`` DiT blocks alternate
self-attention over those tokens (even blocks) and cross-attention from them to the predictive embeddings (odd
blocks), each followed by an MLP. The flow-matching time enters every block through adaptive LayerNorm (shift,
scale and a zero-initialised gate on the attention branch, as in DiT's adaLN-Zero) and the output layer.

Training (GR00T's convention: t = 0 is noise, t = 1 the data):
    noised = (1 - t) * noise + t * action, target velocity = action - noise,
    t = (time_max - s) / time_max with s ~ Beta(alpha, beta), loss = MSE over the valid action entries.
Inference integrates the velocity field with forward Euler from noise at t = 0 to t = 1 in ``euler_steps`` steps.

    head = FlowMatchingHead(cfg.action_head, cond_dim=backbone_width)
    loss = head.loss(predictive, state, actions, valid)          # [B, T, d], [B, S], [B, H, A], [B, H]
    chunk = head.sample(predictive, state)                       # [B, H, A], normalised action space
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jala_ds.model.action_head_config import ActionHeadConfig
from jala_ds.model.perceiver import Attention

TIME_SCALE = 1000.0
"""Times in [0, 1] are stretched to [0, 1000] before the sinusoidal embedding, whose frequencies suit that range
(the diffusion-step convention DiT and GR00T share)."""


def sinusoidal_embedding(time: torch.Tensor, dim: int) -> torch.Tensor:
    """float32 ``[B] -> [B, 2 * (dim // 2)]``: cosines and sines of ``TIME_SCALE * t`` at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=time.device) / half)
    angles = TIME_SCALE * time.float()[:, None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class DiTBlock(nn.Module):
    """Time-modulated attention (self- or cross-) and an MLP, both residual."""

    def __init__(self, width: int, heads: int, *, cross: bool):
        super().__init__()
        self.cross = cross
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(width, 3 * width)
        # adaLN-Zero: shift, scale and gate start at zero, so every block starts as the identity on its attention
        # branch and training is stable at 16 blocks.
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.attention = Attention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))

    def forward(self, tokens: torch.Tensor, context: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """tokens ``[B, L, W]``, context ``[B, T, W]``, time embedding ``[B, W]`` -> ``[B, L, W]``."""
        shift, scale, gate = self.modulation(F.silu(time)).unsqueeze(1).chunk(3, dim=-1)
        normed = self.norm(tokens) * (1 + scale) + shift
        tokens = tokens + gate * self.attention(normed, context if self.cross else normed)
        return tokens + self.mlp(self.mlp_norm(tokens))


class FlowMatchingHead(nn.Module):
    """Predicts the flow-matching velocity of an action chunk from predictive embeddings and the robot state."""

    def __init__(self, cfg: ActionHeadConfig, cond_dim: int):
        super().__init__()
        cfg.validate()
        if cond_dim < 1:
            raise ValueError(f"cond_dim={cond_dim}: the predictive embeddings need a positive width")
        self.cfg = cfg
        width = cfg.width
        # Backbone hidden states can be large and drift during post-training: normalise before projecting.
        self.cond_proj = nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, width))
        self.state_proj = nn.Sequential(nn.Linear(cfg.state_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.action_proj = nn.Linear(cfg.action_dim, width)
        self.positions = nn.Parameter(torch.zeros(1 + cfg.action_horizon, width))
        nn.init.trunc_normal_(self.positions, std=0.02)
        self.time_mlp = nn.Sequential(nn.Linear(2 * (width // 2), width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(DiTBlock(width, cfg.heads, cross=i % 2 == 1) for i in range(cfg.layers))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out_modulation = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, cfg.action_dim)

    def velocity(self, cond: torch.Tensor, state: torch.Tensor, noised: torch.Tensor,
                 time: torch.Tensor) -> torch.Tensor:
        """cond ``[B, T, cond_dim]``, state ``[B, S]``, noised ``[B, H, A]``, time ``[B]`` -> velocity ``[B, H, A]``."""
        self.check_shapes(cond, state, noised)
        dtype = self.action_proj.weight.dtype
        tokens = torch.cat([self.state_proj(state.to(dtype))[:, None], self.action_proj(noised.to(dtype))], dim=1)
        tokens = tokens + self.positions.to(dtype)
        time_embedding = self.time_mlp(sinusoidal_embedding(time, self.cfg.width).to(dtype))
        context = self.cond_proj(cond.to(dtype))
        for block in self.blocks:
            tokens = block(tokens, context, time_embedding)
        shift, scale = self.out_modulation(F.silu(time_embedding)).unsqueeze(1).chunk(2, dim=-1)
        return self.out(self.out_norm(tokens[:, 1:]) * (1 + scale) + shift)

    def loss(self, cond: torch.Tensor, state: torch.Tensor, actions: torch.Tensor, valid: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching MSE averaged over the valid entries of ``actions`` (``valid``: bool ``[B, H]`` or
        ``[B, H, A]``); an exact 0, still in the graph, when nothing is valid."""
        target_actions = actions.float()
        time = self.sample_time(actions.shape[0], generator).to(actions.device)
        noise = torch.randn(actions.shape, generator=generator, device=actions.device, dtype=torch.float32)
        t = time[:, None, None]
        noised = (1 - t) * noise + t * target_actions
        error = (self.velocity(cond, state, noised, time).float() - (target_actions - noise)).square()
        if valid.shape not in (actions.shape[:2], actions.shape):
            raise ValueError(f"valid has shape {tuple(valid.shape)}; expected [B, H] {tuple(actions.shape[:2])} "
                             f"or [B, H, A] {tuple(actions.shape)}")
        mask = (valid[..., None] if valid.dim() == 2 else valid).expand_as(error).to(error.dtype)
        return (error * mask).sum() / mask.sum().clamp(min=1.0)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, state: torch.Tensor, steps: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """An action chunk float32 ``[B, H, A]``: forward Euler from Gaussian noise at t = 0 to t = 1."""
        steps = self.cfg.euler_steps if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps={steps}: Euler integration needs at least one step")
        shape = (cond.shape[0], self.cfg.action_horizon, self.cfg.action_dim)
        actions = torch.randn(shape, generator=generator, device=cond.device, dtype=torch.float32)
        for step in range(steps):
            time = torch.full((shape[0],), step / steps, device=cond.device)
            actions = actions + self.velocity(cond, state, actions, time).float() / steps
        return actions

    def sample_time(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """float32 ``[batch]`` flow-matching times, reproducible from ``generator`` (else torch's global RNG).
        numpy draws the Beta because torch's Beta sampler cannot take a generator."""
        device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(2**62, (), generator=generator, device=device))
        beta = np.random.default_rng(seed).beta(self.cfg.time_beta_alpha, self.cfg.time_beta_beta, batch)
        return torch.from_numpy((self.cfg.time_max - beta) / self.cfg.time_max).float()

    def check_shapes(self, cond: torch.Tensor, state: torch.Tensor, noised: torch.Tensor) -> None:
        horizon, dims = self.cfg.action_horizon, self.cfg.action_dim
        if noised.dim() != 3 or noised.shape[1:] != (horizon, dims):
            raise ValueError(f"actions have shape {tuple(noised.shape)}; this head predicts [B, {horizon}, {dims}] "
                             "chunks (action_head.action_horizon, action_head.action_dim)")
        if state.shape != (noised.shape[0], self.cfg.state_dim):
            raise ValueError(f"state has shape {tuple(state.shape)}; expected [{noised.shape[0]}, "
                             f"{self.cfg.state_dim}] (action_head.state_dim)")
        if cond.dim() != 3 or cond.shape[0] != noised.shape[0]:
            raise ValueError(f"cond has shape {tuple(cond.shape)}; expected [{noised.shape[0]}, T, cond_dim]")
