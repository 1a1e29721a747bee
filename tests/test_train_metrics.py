"""The log window's averages: the back-propagated loss per micro-batch, the MCP loss per labelled token."""
from types import SimpleNamespace

import pytest
import torch
from train_parts import world_of_one

from jala_ds.train.metrics import StepMetrics


def micro_batch(loss: float, mcp: float, labelled: int, samples: int = 2):
    out = SimpleNamespace(loss=torch.tensor(loss), mcp_loss=torch.tensor(mcp), align_loss=torch.tensor(0.5),
                          n_mcp_tokens=labelled)
    batch = {"doc_ids": torch.zeros(samples, 5, dtype=torch.int32), "sample_ids": [f"s{i}" for i in range(samples)]}
    return out, batch


def test_mcp_loss_is_averaged_over_labelled_tokens_and_the_loss_over_micro_batches():
    metrics = StepMetrics(torch.device("cpu"), flops_per_sample=None, peak_flops=None)
    for out, batch in (micro_batch(3.0, 2.0, 3), micro_batch(1.0, 0.0, 0), micro_batch(5.0, 4.0, 1)):
        metrics.add(out, batch)
    with world_of_one():
        logged = metrics.flush(lr=1e-4, grad_norm=None)
    assert logged["loss"] == pytest.approx(3.0)          # (3 + 1 + 5) / 3 micro-batches
    assert logged["mcp_loss"] == pytest.approx(2.5)      # (2 x 3 + 4 x 1) / 4 labelled tokens; the empty one adds none
    assert logged["align_loss"] == pytest.approx(0.5)


def test_a_window_without_labelled_tokens_logs_no_mcp_loss():
    metrics = StepMetrics(torch.device("cpu"), flops_per_sample=None, peak_flops=None)
    metrics.add(*micro_batch(1.0, 0.0, 0))
    with world_of_one():
        logged = metrics.flush(lr=1e-4, grad_norm=None)
    assert "mcp_loss" not in logged and logged["loss"] == pytest.approx(1.0)
