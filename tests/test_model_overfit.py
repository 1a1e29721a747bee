"""A tiny JALA memorises 8 samples: the full training step (MCP + alignment + decoupled EMA) learns."""
from __future__ import annotations

import torch
from model_batches import Doc, make_batch, tiny_setup

from jala_ds.model.build import build_model
from jala_ds.model.ema import FP32Ema


def test_tiny_model_overfits_eight_samples():
    cfg, vocab = tiny_setup()
    torch.manual_seed(0)
    model = build_model(cfg, vocab).train()
    batch = make_batch(cfg, vocab, [[Doc()] for _ in range(6)] + [[Doc(labeled=False)] for _ in range(2)], seed=1)
    params = dict(model.named_parameters())
    ema = FP32Ema([(params[t], params[s]) for t, s in model.ema_pairs()], cfg.model.ema_tau)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    history = []
    for _ in range(150):
        out = model(batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        ema.step()
        history.append((out.mcp_loss.item(), out.align_loss.item()))
    (mcp_start, align_start), (mcp_end, align_end) = history[0], history[-1]
    assert mcp_end < mcp_start / 50, f"MCP loss {mcp_start:.3f} -> {mcp_end:.4f}"
    assert align_end < align_start / 5, f"alignment loss {align_start:.4f} -> {align_end:.4f}"
