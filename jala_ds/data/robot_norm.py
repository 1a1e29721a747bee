"""Normalisation statistics of a robot dataset: computed once at conversion, saved with the data and with every
checkpoint, applied the same way in training and at inference.

Mismatched or missing statistics are the commonest reason a VLA policy scores 0% on a robot, so they travel as one
small JSON file (``norm_stats.json``) and :meth:`NormStats.load` refuses anything incomplete.

Modes (per dimension):
- ``quantile``: ``[q01, q99] -> [-1, 1]``, clipped to ``[-1, 1]`` (robust to outliers; what GR00T and openpi use);
  un-normalising clips to ``[-1, 1]`` too and maps it back onto ``[q01, q99]``: the policy was trained on nothing
  outside it, so a sampler's overshoot never reaches the robot as a command beyond the data's range.
- ``meanstd``: ``(x - mean) / std``, no clipping.

A constant dimension (``q99 == q01``, or ``std == 0``: a gripper that never moves, a padded state entry) normalises
to 0 and un-normalises to its constant, exactly.

    stats = compute_norm_stats(states, actions, mode="quantile")
    stats.save(out / NORM_STATS_FILE)
    stats = NormStats.load(out / NORM_STATS_FILE)
    actions = stats.unnormalize_action(model_output)     # numpy or torch, any leading dims
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

NORM_STATS_FILE = "norm_stats.json"
NORM_MODES = ("quantile", "meanstd")

Array = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class FeatureStats:
    """Per-dimension statistics of one feature (state or action), float32 ``[D]`` each."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @property
    def dim(self) -> int:
        return len(self.mean)

    @classmethod
    def of(cls, values: np.ndarray) -> FeatureStats:
        """Statistics of ``values`` ``[N, D]`` (float64 accumulation, float32 result)."""
        values = np.asarray(values, np.float64)
        q01, q99 = np.quantile(values, [0.01, 0.99], axis=0)
        return cls(mean=values.mean(0), std=values.std(0), q01=q01, q99=q99, min=values.min(0), max=values.max(0))

    def __post_init__(self) -> None:
        for field in fields(self):
            object.__setattr__(self, field.name, np.asarray(getattr(self, field.name), np.float32).reshape(-1))

    def to_json(self) -> dict[str, list[float]]:
        return {field.name: getattr(self, field.name).tolist() for field in fields(self)}

    def normalize(self, x: Array, mode: str) -> Array:
        low, scale, constant = self.affine(mode)
        out = (x - as_like(low, x)) / as_like(scale, x)
        if mode == "quantile":
            out = out.clip(-1.0, 1.0) if isinstance(out, np.ndarray) else out.clamp(-1.0, 1.0)
        return out * as_like(~constant, x)

    def unnormalize(self, x: Array, mode: str) -> Array:
        low, scale, constant = self.affine(mode)
        if mode == "quantile":
            x = x.clip(-1.0, 1.0) if isinstance(x, np.ndarray) else x.clamp(-1.0, 1.0)
        # A constant dimension's output is whatever the model drifts to around its 0 target; the robot gets the
        # constant itself (a padded or never-moving dimension), never constant + that drift in robot units.
        return x * as_like(scale, x) * as_like(~constant, x) + as_like(low, x)

    def affine(self, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(offset, scale, constant)`` with ``normalized = (x - offset) / scale``; a constant dimension gets
        scale 1 and its constant as offset, so it maps to 0 and back to the constant exactly."""
        if mode == "quantile":
            spread = (self.q99 - self.q01) / 2
            constant = spread <= 0
            offset = np.where(constant, self.q01, (self.q99 + self.q01) / 2)
        else:
            spread, constant, offset = self.std, self.std <= 0, self.mean
        return offset.astype(np.float32), np.where(constant, 1.0, spread).astype(np.float32), constant


def as_like(values: np.ndarray, x: Array) -> Array:
    """``values`` as an array of ``x``'s kind, device and dtype (bool stays numeric for multiplication)."""
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(values.astype(np.float32), device=x.device, dtype=x.dtype)
    return values.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)


@dataclass(frozen=True)
class NormStats:
    state: FeatureStats
    action: FeatureStats
    mode: str
    """``quantile`` (q01/q99 -> [-1, 1], clipped) or ``meanstd``."""

    def __post_init__(self) -> None:
        if self.mode not in NORM_MODES:
            raise ValueError(f"normalisation mode {self.mode!r} is unknown: use one of {', '.join(NORM_MODES)}")

    def normalize_state(self, x: Array) -> Array:
        return self.state.normalize(x, self.mode)

    def normalize_action(self, x: Array) -> Array:
        return self.action.normalize(x, self.mode)

    def unnormalize_action(self, x: Array) -> Array:
        return self.action.unnormalize(x, self.mode)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "state": self.state.to_json(), "action": self.action.to_json()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        """The statistics in ``path``; one clear error if the file is missing, not JSON, or incomplete."""
        path = Path(path)
        fix = ("re-run `jala data convert --format lerobot` (it writes norm_stats.json next to the shards), or copy "
               "the norm_stats.json of the dataset the checkpoint was trained on")
        if not path.is_file():
            raise FileNotFoundError(f"normalisation statistics {path} not found: {fix}")
        try:
            tree = json.loads(path.read_text())
            stats = cls(state=FeatureStats(**tree["state"]), action=FeatureStats(**tree["action"]), mode=tree["mode"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"normalisation statistics {path} are unreadable ({err.__class__.__name__}: {err}): "
                             f"{fix}") from None
        for name, feature in (("state", stats.state), ("action", stats.action)):
            lengths = {len(getattr(feature, f.name)) for f in fields(feature)}
            if len(lengths) != 1 or not all(np.isfinite(getattr(feature, f.name)).all() for f in fields(feature)):
                raise ValueError(f"normalisation statistics {path}: {name} statistics have unequal lengths or "
                                 f"non-finite values: {fix}")
        return stats


def compute_norm_stats(states: np.ndarray, actions: np.ndarray, mode: str) -> NormStats:
    """Statistics of every frame's state ``[N, S]`` and action ``[N, A]``."""
    if len(states) == 0 or len(actions) == 0:
        raise ValueError("no frames to compute normalisation statistics from: the dataset has no valid frame")
    return NormStats(state=FeatureStats.of(states), action=FeatureStats.of(actions), mode=mode)
