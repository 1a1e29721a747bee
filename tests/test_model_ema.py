"""FP32Ema against its closed form, in bf16 without stalling, across a state_dict round trip, and on JalaModel."""
from __future__ import annotations

import pytest
import torch
from model_batches import Doc, make_batch, tiny_setup

from jala_ds.model.build import build_model
from jala_ds.model.ema import FP32Ema


def test_constant_source_follows_the_closed_form():
    tau, steps = 0.9, 25
    target, source = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    start = target.clone()
    ema = FP32Ema([(target, source)], tau)
    for _ in range(steps):
        ema.step()
    expected = source + (start - source) * tau ** steps  # t_k = s + (t_0 - s) tau^k
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-6)


def test_moving_source_matches_the_recursion_in_float64():
    tau = 0.95
    target, source = torch.randn(64), torch.zeros(64)
    reference = target.double()
    ema = FP32Ema([(target, source)], tau)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        source.copy_(torch.randn(64, generator=gen))  # the optimiser moves the source between steps
        ema.step()
        reference = tau * reference + (1 - tau) * source.double()
    torch.testing.assert_close(target.double(), reference, rtol=1e-5, atol=1e-6)


def test_bf16_parameters_are_not_stalled_by_rounding():
    tau, steps = 0.9999, 1000
    target = torch.ones(8, dtype=torch.bfloat16)
    source = torch.full((8,), 2.0, dtype=torch.bfloat16)
    naive = target.clone()
    for _ in range(steps):  # the same update computed in bf16: each increment (1e-4) rounds away
        naive.mul_(tau).add_(source, alpha=1 - tau)
    assert torch.equal(naive, torch.ones(8, dtype=torch.bfloat16)), "the bf16 EMA this guards against stalls"

    ema = FP32Ema([(target, source)], tau)
    for _ in range(steps):
        ema.step()
    expected = 2.0 - tau ** steps  # 1.0952
    torch.testing.assert_close(ema.shadows[0], torch.full((8,), expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target.float(), torch.full((8,), expected), rtol=0, atol=2 ** -7)


def test_state_dict_round_trip_continues_identically():
    target_a, source = torch.randn(10, dtype=torch.bfloat16), torch.randn(10, dtype=torch.bfloat16)
    target_b = target_a.clone()
    first = FP32Ema([(target_a, source)], 0.99)
    for _ in range(7):
        first.step()
    resumed = FP32Ema([(target_b, source)], 0.99)
    resumed.load_state_dict(first.state_dict())
    for _ in range(5):
        first.step()
        resumed.step()
    assert torch.equal(resumed.shadows[0], first.shadows[0]) and torch.equal(target_b, target_a)


def test_mismatched_pair_shapes_are_refused():
    with pytest.raises(ValueError, match="EMA pair 0"):
        FP32Ema([(torch.zeros(3), torch.zeros(4))], 0.9)


def test_model_pairs_after_an_optimiser_step():
    cfg, vocab = tiny_setup()
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    params = dict(model.named_parameters())
    pairs = model.ema_pairs()
    ema = FP32Ema([(params[t], params[s]) for t, s in pairs], cfg.model.ema_tau)
    before = {t: params[t].detach().clone() for t, _ in pairs}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(make_batch(cfg, vocab, [[Doc()]], seed=0)).loss.backward()
    optimizer.step()
    ema.step()
    tau = cfg.model.ema_tau
    for target, source in pairs:
        torch.testing.assert_close(params[target], tau * before[target] + (1 - tau) * params[source])
    assert not torch.equal(params["lsp.queries"], before["lsp.queries"]), "LSP's queries follow LAP's"
