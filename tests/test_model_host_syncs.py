"""A training forward and backward never make the host wait for the device (the collate finds the positions)."""
from __future__ import annotations

import pytest
import torch
from host_syncs import HostSyncCensus
from model_batches import Doc, make_batch, tiny_setup

import jala_kernels
from jala_ds.model.build import build_model


@pytest.fixture(scope="module")
def batch_and_vocab():
    cfg, vocab = tiny_setup()
    docs = [[Doc(chunks=1), Doc(hands=(0,), chunks=1, instruction="wipe")], [Doc(labeled=False, chunks=1)]]
    return make_batch(cfg, vocab, docs, seed=4), vocab


def test_the_census_sees_syncs_and_where_they_were_called(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(1, 2, 8, 16)
    doc, chunk = torch.zeros(1, 8, dtype=torch.int32), torch.full((1, 8), -1, dtype=torch.int32)
    census = HostSyncCensus()
    with census:
        jala_kernels.chunk_attention(q, q, q, doc, chunk)  # no bounds given: the kernel finds them, and checks
        torch.ones(3)[torch.tensor([True, False, True])].sum().item()
    assert {name for name, _ in census.calls} == {"chunk_bounds", "index", "_local_scalar_dense"}, census.calls
    assert any("chunk_attention.py" in site for name, site in census.calls if name == "chunk_bounds"), census.calls


@pytest.mark.parametrize("overrides", [["model.attention=triton", "model.fused_ops=true"], []],
                         ids=["triton attention, fused ops", "reference attention"])
def test_training_forward_and_backward_issue_no_host_sync(batch_and_vocab, monkeypatch, overrides):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the Triton kernels run (interpreted) on CPU tensors
    batch, vocab = batch_and_vocab
    cfg, _ = tiny_setup(*overrides)
    torch.manual_seed(0)
    model = build_model(cfg, vocab).train()
    census = HostSyncCensus()
    with census:
        out = model(batch)
        out.loss.backward()
    assert out.n_mcp_tokens == int((batch["labels"] != -100).sum()) > 0
    assert not census.calls, f"host syncs in a training step: {dict(census.calls)}"


def test_index_fields_that_disagree_with_the_batch_are_refused(batch_and_vocab):
    batch, vocab = batch_and_vocab
    cfg, _ = tiny_setup()
    model = build_model(cfg, vocab)
    short = dict(batch, chunk_tokens=batch["chunk_tokens"][:, 1:])
    with pytest.raises(ValueError, match=r"batch\['chunk_tokens'\] is .*motion_tokenizer.tokens_per_chunk"):
        model(short)
    missing = dict(batch, image_positions=batch["image_positions"][1:])
    with pytest.raises(ValueError, match=r"<IMG_CONTEXT> tokens but batch\['pixel_values'\] gives"):
        model(missing)
