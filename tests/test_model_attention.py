"""The chunk mask through the whole model, and agreement of every attention backend available here.

Mask contract: query i sees key j iff doc[i] == doc[j] >= 0 and (j <= i or (chunk[i] >= 0 and chunk[i] == chunk[j])).
"""
from __future__ import annotations

import copy

import pytest
import torch
from model_batches import Doc, make_batch, tiny_setup, to_device

import jala_kernels
from jala_ds.model import chunk_mask_attention
from jala_ds.model.build import build_model
from jala_ds.model.chunk_mask_attention import attention_implementation, flex_chunk_attention, reference_attention


def final_hidden(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.hidden_states(batch, model.encode_frames(batch))[0]


@pytest.fixture(scope="module")
def setup():
    cfg, vocab = tiny_setup()
    torch.manual_seed(0)
    return cfg, vocab, build_model(cfg, vocab).eval()


def chunk_span(batch, row: int, chunk: int) -> tuple[int, int]:
    positions = (batch["chunk_ids"][row] == chunk).nonzero().squeeze(1)
    return int(positions[0]), int(positions[-1]) + 1


@pytest.mark.parametrize("chunk", [1, 3])
def test_changing_a_chunk_token_changes_its_whole_chunk_and_nothing_before(setup, chunk):
    cfg, vocab, model = setup
    batch = make_batch(cfg, vocab, [[Doc(chunks=2)]], seed=1)  # 4 chunks: L1 R1 L2 R2
    start, end = chunk_span(batch, 0, chunk)
    edited = dict(batch, input_ids=batch["input_ids"].clone())
    position = start + 5  # inside the chunk, neither its first nor its last token
    # A text byte: every motion row starts at the same mean embedding, so swapping motion ids changes nothing.
    edited["input_ids"][0, position] = 65

    before, after = final_hidden(model, batch)[0], final_hidden(model, edited)[0]
    torch.testing.assert_close(after[:start], before[:start], rtol=0, atol=1e-6)
    change = (after[start:end] - before[start:end]).abs().amax(dim=-1)
    assert bool((change > 1e-5).all()), f"positions of the edited chunk left unchanged: {change.tolist()}"


def test_packed_documents_match_the_same_documents_in_separate_rows(setup):
    cfg, vocab, model = setup
    docs = [Doc(chunks=2), Doc(hands=(1,), chunks=1, labeled=False, instruction="wipe")]
    packed = make_batch(cfg, vocab, [docs], seed=2)
    separate = make_batch(cfg, vocab, [[docs[0]], [docs[1]]], seed=2)  # same draws, one document per row
    first, second = int((packed["doc_ids"][0] == 0).sum()), int((packed["doc_ids"][0] == 1).sum())
    assert bool((separate["doc_ids"][1, second:] == -1).all()), "the shorter row must be padded"
    assert torch.equal(packed["input_ids"][0, first:first + second], separate["input_ids"][1, :second])

    packed_out, separate_out = final_hidden(model, packed)[0], final_hidden(model, separate)
    torch.testing.assert_close(packed_out[:first], separate_out[0, :first], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed_out[first:first + second], separate_out[1, :second], rtol=1e-4, atol=1e-5)


def attention_inputs(seed: int = 0):
    """Random GQA inputs with two packed documents, chunks and padding."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, 24, 8, generator=gen)
    k, v = torch.randn(2, 2, 24, 8, generator=gen), torch.randn(2, 2, 24, 8, generator=gen)
    doc = torch.tensor([[0] * 10 + [1] * 11 + [-1] * 3, [0] * 24], dtype=torch.int32)
    chunk = torch.full((2, 24), -1, dtype=torch.int32)
    chunk[0, 3:7], chunk[0, 14:19], chunk[1, 5:12], chunk[1, 12:20] = 0, 1, 0, 1
    return q, k, v, doc, chunk


def test_reference_backend_equals_kernel_reference_with_gradients():
    q, k, v, doc, chunk = attention_inputs()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = jala_kernels.chunk_attention_reference(*leaves, doc, chunk, scale=0.3)
    expected.square().sum().backward()
    mine = [t.clone().requires_grad_() for t in (q, k, v)]
    out, _ = reference_attention(None, *mine, None, scaling=0.3, doc_ids=doc, chunk_ids=chunk)
    out = out.transpose(1, 2)
    out.square().sum().backward()
    torch.testing.assert_close(out, expected)
    assert bool((out[0, :, -3:] == 0).all()), "padding rows must return zeros"
    for grad, ref in zip((t.grad for t in mine), (t.grad for t in leaves)):
        torch.testing.assert_close(grad, ref)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_backend_equals_kernel_reference_forward():
    # FlexAttention has no CPU backward: gradients are compared on GPU (benchmarks/device check).
    q, k, v, doc, chunk = attention_inputs(1)
    out, _ = flex_chunk_attention(None, q, k, v, None, scaling=0.3, doc_ids=doc, chunk_ids=chunk)
    torch.testing.assert_close(out.transpose(1, 2), jala_kernels.chunk_attention_reference(q, k, v, doc, chunk, 0.3))


def test_only_the_language_model_uses_the_chunk_mask(setup):
    _, _, model = setup
    config = model.backbone.config
    assert config.text_config._attn_implementation == attention_implementation("reference")
    assert config.vision_config._attn_implementation == "sdpa", "the vision tower keeps its full attention"


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_and_reference_models_agree_with_one_block_mask_per_batch(setup, monkeypatch):
    cfg, vocab, reference = setup
    flex_cfg, _ = tiny_setup("model.attention=flex")
    flex = build_model(flex_cfg, vocab).eval()
    flex.load_state_dict(reference.state_dict())
    built = []
    real_create = chunk_mask_attention.create_block_mask

    def counted_create(*args, **kwargs):  # the real function, counted
        built.append(args)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(chunk_mask_attention, "create_block_mask", counted_create)
    batch = make_batch(cfg, vocab, [[Doc(), Doc(hands=(0,), chunks=1)], [Doc(labeled=False)]], seed=3)
    torch.testing.assert_close(final_hidden(flex, batch), final_hidden(reference, batch), rtol=1e-4, atol=1e-5)
    assert len(built) == 1, f"{len(built)} BlockMasks for one batch through 3 layers"


@pytest.mark.parametrize("kernels", [
    pytest.param("model.attention=flex", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="FlexAttention has no CPU backward; its CPU forward is checked in "
                                              "test_flex_and_reference_models_agree_with_one_block_mask_per_batch")),
    "model.attention=triton",
    "model.fused_ops=true",
])
def test_kernel_models_agree_with_reference_in_loss_and_gradients(setup, monkeypatch, kernels):
    cfg, vocab, reference = setup
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":  # the Triton kernels run in Triton's interpreter
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    backend_cfg, _ = tiny_setup(kernels)
    models = [copy.deepcopy(reference), build_model(backend_cfg, vocab)]
    models[1].load_state_dict(reference.state_dict())
    batch = to_device(make_batch(cfg, vocab, [[Doc(), Doc(hands=(0,), chunks=1)], [Doc(labeled=False)]], seed=4),
                      device)
    losses = []
    for model in models:
        model.to(device).train()
        out = model(batch)
        out.loss.backward()
        losses.append(out.loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for (name, ref), (_, mine) in zip(models[0].named_parameters(), models[1].named_parameters()):
        if ref.grad is not None:
            torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-3, atol=1e-5, msg=f"gradient of {name}")
