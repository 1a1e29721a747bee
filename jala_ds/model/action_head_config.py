"""Action head section of a post-training recipe: the flow-matching DiT that turns predictive embeddings into actions."""
from __future__ import annotations

from dataclasses import dataclass

from jala_ds.config_checks import require


@dataclass
class ActionHeadConfig:
    layers: int = 16
    """DiT blocks; even-numbered blocks self-attend over [state, noised actions], odd ones cross-attend to the
    predictive embeddings (16 in the paper)."""
    heads: int = 32
    """Attention heads of every block (32 in the paper)."""
    width: int = 2048
    """Token width of the DiT (2048 in the paper)."""
    action_horizon: int = 16
    """Actions H predicted per chunk (the robot executes some or all of them before asking again)."""
    action_dim: int = 7
    """Dimensions A of one action (7 for LIBERO's end-effector delta + gripper)."""
    state_dim: int = 8
    """Dimensions S of the proprioceptive state (8 for LIBERO)."""
    time_beta_alpha: float = 1.5
    """alpha of the Beta(alpha, beta) that draws flow-matching times (GR00T's 1.5)."""
    time_beta_beta: float = 1.0
    """beta of that Beta (GR00T's 1.0)."""
    time_max: float = 0.999
    """t = (time_max - s) / time_max with s ~ Beta(alpha, beta): with alpha > beta, times lean towards 0, the noise
    end, where the velocity is hardest to predict (GR00T's schedule)."""
    euler_steps: int = 10
    """Forward Euler steps from noise (t = 0) to an action chunk (t = 1) at inference."""

    def validate(self) -> None:
        require(self.layers >= 2, "action_head.layers",
                "needs at least 2 (blocks alternate self- and cross-attention; one block never reads the "
                "predictive embeddings); the paper uses 16")
        require(self.heads > 0 and self.width % self.heads == 0, "action_head.width",
                f"must be a positive multiple of action_head.heads={self.heads}")
        require(self.action_horizon > 0, "action_head.action_horizon", "must be positive")
        require(self.action_dim > 0, "action_head.action_dim", "must be positive")
        require(self.state_dim > 0, "action_head.state_dim", "must be positive")
        require(self.time_beta_alpha > 0 and self.time_beta_beta > 0, "action_head.time_beta_alpha",
                "the Beta parameters time_beta_alpha and time_beta_beta must both be positive")
        require(0.0 < self.time_max <= 1.0, "action_head.time_max", "must lie in (0, 1] (GR00T uses 0.999)")
        require(self.euler_steps > 0, "action_head.euler_steps", "must be positive")
