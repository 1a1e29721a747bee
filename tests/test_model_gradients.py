"""Where gradients go: the decoupled perceiver halves, video-only batches, and the ablation switches."""
from __future__ import annotations

import pytest
import torch
from model_batches import Doc, make_batch, tiny_setup

from jala_ds.model.build import build_model


def backward(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(batch)
    out.loss.backward()
    return out


def grad_norm(param: torch.nn.Parameter) -> float:
    return 0.0 if param.grad is None else float(param.grad.norm())


@pytest.fixture(scope="module")
def setup():
    cfg, vocab = tiny_setup()
    torch.manual_seed(0)
    return cfg, vocab, build_model(cfg, vocab).train()


def test_ema_driven_halves_take_no_gradient_and_trained_halves_do(setup):
    cfg, vocab, model = setup
    backward(model, make_batch(cfg, vocab, [[Doc()], [Doc(labeled=False)]], seed=0))
    assert model.lsp.queries.grad is None and not model.lsp.queries.requires_grad
    for name, param in model.lap.trunk.named_parameters():
        assert param.grad is None and not param.requires_grad, f"lap.trunk.{name} must follow LSP by EMA only"
    assert grad_norm(model.lap.queries) > 0
    trained = [grad_norm(p) for p in model.lsp.trunk.parameters()]
    assert all(g > 0 for g in trained), f"every LSP trunk tensor must be trained, norms {trained}"
    assert all(p.grad is None for p in model.visual_encoder.parameters()), "the visual encoder is frozen"
    assert grad_norm(model.backbone.model.vision_tower.embeddings.patch_embeddings.projection.weight) > 0, \
        "the VLM's own vision tower trains in pretraining"


def test_ema_pairs_name_equal_shapes_and_cover_both_directions(setup):
    _, _, model = setup
    params = dict(model.named_parameters())
    pairs = model.ema_pairs()
    assert ("lsp.queries", "lap.queries") in pairs
    assert {t for t, _ in pairs} == {"lsp.queries"} | {f"lap.trunk.{n}" for n, _ in model.lap.trunk.named_parameters()}
    for target, source in pairs:
        assert params[target].shape == params[source].shape
        assert torch.equal(params[target], params[source]), f"{target} must start as a copy of {source}"


def test_video_only_batch_has_zero_mcp_and_no_head_gradient(setup):
    cfg, vocab, model = setup
    out = backward(model, make_batch(cfg, vocab, [[Doc(labeled=False)], [Doc(labeled=False, hands=(1,))]], seed=1))
    assert out.n_mcp_tokens == 0
    assert out.mcp_loss.item() == 0.0 and out.mcp_loss.requires_grad, "a real zero, connected to the graph"
    assert out.align_loss.item() > 0
    head = model.backbone.lm_head.weight.grad
    assert head is not None and bool((head[vocab.mot_start:] == 0).all()), "no MCP gradient on the motion rows"


def test_labeled_batch_trains_the_motion_rows_of_the_head(setup):
    cfg, vocab, model = setup
    out = backward(model, make_batch(cfg, vocab, [[Doc()]], seed=2))
    assert out.n_mcp_tokens > 0
    assert float(model.backbone.lm_head.weight.grad[vocab.motion_base:].abs().sum()) > 0


def test_without_decoupling_both_perceivers_start_shared_and_train_everything():
    cfg, vocab = tiny_setup("model.decoupled_ema=false")
    model = build_model(cfg, vocab)
    assert model.ema_pairs() == []
    lap, lsp = model.lap.state_dict(), model.lsp.state_dict()
    assert lap.keys() == lsp.keys() and all(torch.equal(lap[k], lsp[k]) for k in lap), \
        "'w/o dec.' must differ from JALA in its updates, not in its initial weights"
    backward(model, make_batch(cfg, vocab, [[Doc()]], seed=3))
    for perceiver in ("lap", "lsp"):
        norms = {n: grad_norm(p) for n, p in getattr(model, perceiver).named_parameters()}
        assert all(g > 0 for g in norms.values()), f"{perceiver} has untrained tensors: {norms}"


@pytest.mark.parametrize("overrides, has_lap, has_lsp", [
    (("model.align=false", "model.decoupled_ema=false"), False, True),                 # JALA w/o align
    (("model.objective=ntp", "model.align=false", "model.decoupled_ema=false",
      "model.lsp_context=false"), False, False),                                        # Being-H0
])
def test_ablations_drop_their_perceivers_and_the_alignment(overrides, has_lap, has_lsp):
    cfg, vocab = tiny_setup(*overrides)
    model = build_model(cfg, vocab)
    assert (model.lap is not None, model.lsp is not None) == (has_lap, has_lsp)
    assert (model.visual_encoder is not None) == has_lsp
    out = backward(model, make_batch(cfg, vocab, [[Doc()]], seed=4))
    assert out.align_loss.item() == 0.0 and out.latent_actions is None
    torch.testing.assert_close(out.loss, out.mcp_loss)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    cfg, vocab = tiny_setup()
    checkpointed_cfg, _ = tiny_setup("model.gradient_checkpointing=true")
    torch.manual_seed(0)
    plain = build_model(cfg, vocab).train()
    checkpointed = build_model(checkpointed_cfg, vocab).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.backbone.is_gradient_checkpointing and not plain.backbone.is_gradient_checkpointing
    batch = make_batch(cfg, vocab, [[Doc(), Doc(hands=(1,), chunks=1)], [Doc(labeled=False)]], seed=6)
    expected, actual = backward(plain, batch), backward(checkpointed, batch)
    torch.testing.assert_close(actual.loss, expected.loss)
    torch.testing.assert_close(actual.predictive, expected.predictive)
    for (name, ref), (_, mine) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if ref.grad is not None:
            torch.testing.assert_close(mine.grad, ref.grad, msg=f"gradient of {name}")
