"""Hand-motion metrics against hand-worked cases (paper Table 1: MPJPE, PA-MPJPE, MWTE, MDE)."""
import math

import pytest
import torch

from jala_ds.motion.metrics import mde, motion_metrics, mpjpe, mwte, pa_mpjpe


def random_rotation(gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.linalg.det(q) > 0 else -q


def joints(gen: torch.Generator, n: int = 4, t: int = 15) -> torch.Tensor:
    return torch.randn(n, t, 21, 3, generator=gen, dtype=torch.float64) * 0.05


def test_perfect_prediction_scores_zero_everywhere():
    true = joints(torch.Generator().manual_seed(0))
    scores = motion_metrics(true.clone(), true)
    assert scores["mpjpe_cm"] == 0 and scores["mwte_cm"] == 0
    assert scores["pa_mpjpe_cm"] < 1e-9 and scores["mde_deg"] < 1e-4


def test_pa_mpjpe_ignores_similarity_transforms_while_mpjpe_does_not():
    gen = torch.Generator().manual_seed(1)
    true = joints(gen)
    moved = 1.7 * true @ random_rotation(gen).T + torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    assert float(pa_mpjpe(moved, true)) < 1e-9
    assert float(mpjpe(moved, true)) > 1.0


def test_rigid_alignment_ignores_rotation_and_translation_but_not_scale():
    """The paper's wording ("rigid alignment"): a hand drawn 20% too large keeps an error under rigid alignment,
    none under the similarity one; moved without scaling, both forgive it."""
    gen = torch.Generator().manual_seed(2)
    true = joints(gen)
    rotated = true @ random_rotation(gen).T + torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    assert float(pa_mpjpe(rotated, true, "rigid")) < 1e-9
    larger = 1.2 * rotated
    assert float(pa_mpjpe(larger, true, "similarity")) < 1e-9
    assert float(pa_mpjpe(larger, true, "rigid")) > 0.1
    with pytest.raises(ValueError, match="alignment='affine': use one of similarity, rigid"):
        pa_mpjpe(larger, true, "affine")


def test_mpjpe_and_mwte_in_centimetres():
    true = torch.zeros(1, 2, 21, 3, dtype=torch.float64)
    pred = true.clone()
    pred[..., 0] += 0.03  # every joint 3 cm off along x
    assert math.isclose(float(mpjpe(pred, true)), 3.0, rel_tol=1e-9)
    assert math.isclose(float(mwte(pred, true)), 3.0, rel_tol=1e-9)


def test_mde_of_a_reversed_trajectory_is_180_degrees():
    steps = torch.linspace(0, 1, 15, dtype=torch.float64)
    true = torch.zeros(1, 15, 21, 3, dtype=torch.float64)
    true[..., 0] = steps[None, :, None] * 0.2
    reversed_pred = true.flip(dims=[1])
    assert math.isclose(float(mde(reversed_pred, true)), 180.0, abs_tol=1e-6)
    sideways = true.clone()[..., [1, 0, 2]]  # wrist moves along y instead of x
    assert math.isclose(float(mde(sideways, true)), 90.0, abs_tol=1e-6)


def test_mde_scores_a_motionless_prediction_at_90_degrees_and_skips_a_motionless_truth():
    """A model that predicts no motion must not be spared: only chunks whose true wrist stays put have no
    direction to match."""
    steps = torch.linspace(0, 1, 15, dtype=torch.float64)
    true = torch.zeros(2, 15, 21, 3, dtype=torch.float64)
    true[0, ..., 0] = steps[:, None] * 0.2   # moves along x; the second chunk stays put
    pred = true.clone()
    assert math.isclose(float(mde(pred, true)), 0.0, abs_tol=1e-6)  # only the moving chunk counts
    assert math.isclose(float(mde(torch.zeros_like(true), true)), 90.0, abs_tol=1e-6)
    assert math.isnan(float(mde(pred, torch.zeros_like(true))))
