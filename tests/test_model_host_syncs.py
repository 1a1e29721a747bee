"""A training forward and backward never make the host wait for the device (the collate finds the positions).

Without a GPU a census of the operators that would (``host_syncs.py``) runs over CPU tensors, the Triton kernels
interpreted; with one, the model runs on it and CUDA's own sync check (``set_sync_debug_mode("error")``) watches
too, which also catches what a CPU cannot show (a blocking copy from the host, a sync inside a CUDA kernel's
wrapper).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from host_syncs import HostSyncCensus
from model_batches import Doc, make_batch, tiny_setup, to_device

import jala_kernels
from jala_ds.model.build import build_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    if DEVICE == "cpu":  # the Triton kernels run (interpreted) on CPU tensors
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def batch_and_vocab():
    cfg, vocab = tiny_setup()
    docs = [[Doc(chunks=1), Doc(hands=(0,), chunks=1, instruction="wipe")], [Doc(labeled=False, chunks=1)]]
    return to_device(make_batch(cfg, vocab, docs, seed=4), DEVICE), vocab


def test_the_census_sees_syncs_and_where_they_were_called():
    q = torch.randn(1, 2, 8, 16, device=DEVICE)
    doc = torch.zeros(1, 8, dtype=torch.int32, device=DEVICE)
    chunk = torch.full((1, 8), -1, dtype=torch.int32, device=DEVICE)
    census = HostSyncCensus()
    with census:
        jala_kernels.chunk_attention(q, q, q, doc, chunk)  # no bounds given: the kernel finds them, and checks
        torch.ones(3)[torch.tensor([True, False, True])].sum().item()
    assert {name for name, _ in census.calls} == {"chunk_bounds", "index", "_local_scalar_dense"}, census.calls
    assert any("chunk_attention.py" in site for name, site in census.calls if name == "chunk_bounds"), census.calls


@pytest.mark.parametrize("overrides", [["model.attention=triton", "model.fused_ops=true"], []],
                         ids=["triton attention, fused ops", "reference attention"])
def test_training_forward_and_backward_issue_no_host_sync(batch_and_vocab, overrides):
    batch, vocab = batch_and_vocab
    cfg, _ = tiny_setup(*overrides)
    torch.manual_seed(0)
    model = build_model(cfg, vocab).to(DEVICE).train()
    if DEVICE == "cuda":  # autotuning times the kernels on their first call, which synchronises
        model(batch).loss.backward()
    census = HostSyncCensus()
    with census, cuda_sync_check():
        out = model(batch)
        out.loss.backward()
    assert out.n_mcp_tokens == int((batch["labels"] != -100).sum()) > 0
    assert not census.calls, f"host syncs in a training step: {dict(census.calls)}"


@contextlib.contextmanager
def cuda_sync_check():
    """On a GPU, any operation that synchronises with the device raises inside the block."""
    if DEVICE != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def test_index_fields_that_disagree_with_the_batch_are_refused(batch_and_vocab):
    batch, vocab = batch_and_vocab
    cfg, _ = tiny_setup()
    model = build_model(cfg, vocab).to(DEVICE)
    short = dict(batch, chunk_tokens=batch["chunk_tokens"][:, 1:])
    with pytest.raises(ValueError, match=r"batch\['chunk_tokens'\] is .*motion_tokenizer.tokens_per_chunk"):
        model(short)
    missing = dict(batch, image_positions=batch["image_positions"][1:])
    with pytest.raises(ValueError, match=r"<IMG_CONTEXT> tokens but batch\['pixel_values'\] gives"):
        model(missing)
