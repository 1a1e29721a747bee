"""Hand-motion metrics of the paper's Table 1, on forward-kinematics joints.

All inputs are joint positions in metres, ``[..., T, J, 3]`` with joint 0 the wrist; results are in
centimetres (the paper's table reads as centimetres) except MDE, in degrees.

- MPJPE: mean Euclidean distance between predicted and true joints over every frame and joint.
- PA-MPJPE: MPJPE after a Procrustes alignment of each predicted frame onto the true one: it scores the hand's
  shape, not where it is. The alignment is a similarity (rotation, translation, scale), as the hand-pose
  literature's PA-MPJPE is usually computed, or rigid (no scale), as the JALA paper words it. The paper does not
  say which its code used: ``jala eval motion --procrustes`` chooses, and the report names the choice.
- MWTE: mean wrist trajectory error, the mean distance between predicted and true wrist positions.
- MDE: angle between the predicted and true displacement of the wrist from the first to the last frame.
"""
from __future__ import annotations

import torch

CM_PER_M = 100.0


def mpjpe(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error in cm, over every leading dim."""
    return (pred - true).norm(dim=-1).mean() * CM_PER_M


ALIGNMENTS = ("similarity", "rigid")


def procrustes_align(pred: torch.Tensor, true: torch.Tensor, alignment: str = "similarity") -> torch.Tensor:
    """The transform of each ``pred [..., J, 3]`` point set that best fits ``true`` in least squares: rotation and
    translation, and a scale unless ``alignment`` is ``rigid``."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment={alignment!r}: use one of {', '.join(ALIGNMENTS)}")
    mu_p, mu_t = pred.mean(dim=-2, keepdim=True), true.mean(dim=-2, keepdim=True)
    p, t = pred - mu_p, true - mu_t
    cov = p.transpose(-1, -2) @ t
    u, s, vh = torch.linalg.svd(cov)
    # Flip the last axis where needed so the result is a rotation, never a reflection (Umeyama).
    d = torch.sign(torch.linalg.det(u @ vh))
    flip = torch.ones_like(s)
    flip[..., -1] = d
    rot = u @ torch.diag_embed(flip) @ vh
    scale = (s * flip).sum(dim=-1) / p.pow(2).sum(dim=(-1, -2)).clamp_min(1e-12)
    if alignment == "rigid":
        scale = torch.ones_like(scale)
    return scale[..., None, None] * (p @ rot) + mu_t


def pa_mpjpe(pred: torch.Tensor, true: torch.Tensor, alignment: str = "similarity") -> torch.Tensor:
    """MPJPE in cm after per-frame Procrustes alignment (``similarity`` or ``rigid``)."""
    return mpjpe(procrustes_align(pred, true, alignment), true)


def mwte(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean wrist trajectory error in cm (joint 0)."""
    return (pred[..., 0, :] - true[..., 0, :]).norm(dim=-1).mean() * CM_PER_M


def mde(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean angle in degrees between predicted and true final wrist displacements (from the first frame).

    A sequence whose true wrist does not move (displacement under 1e-6 m) has no direction to match and is left
    out (NaN when none moves). A prediction that does not move, where the truth does, scores 90 degrees, the mean
    angle of a direction chosen at random: leaving it out would spare a model that predicts no motion.
    """
    d_pred = pred[..., -1, 0, :] - pred[..., 0, 0, :]
    d_true = true[..., -1, 0, :] - true[..., 0, 0, :]
    n_pred, n_true = d_pred.norm(dim=-1), d_true.norm(dim=-1)
    cos = (d_pred * d_true).sum(dim=-1) / (n_pred * n_true).clamp_min(1e-12)
    angles = torch.where(n_pred > 1e-6, torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))), 90.0)
    moved = n_true > 1e-6
    return angles[moved].mean() if moved.any() else torch.tensor(float("nan"))


def motion_metrics(pred: torch.Tensor, true: torch.Tensor, alignment: str = "similarity") -> dict[str, float]:
    """All four metrics for joints ``[N, T, J, 3]`` of one hand; ``alignment`` is PA-MPJPE's."""
    return {"mpjpe_cm": float(mpjpe(pred, true)), "pa_mpjpe_cm": float(pa_mpjpe(pred, true, alignment)),
            "mwte_cm": float(mwte(pred, true)), "mde_deg": float(mde(pred, true))}
