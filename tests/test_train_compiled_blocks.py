"""Compiled layers (``train.compile_blocks``): the same loss and gradients as eager layers, a few graphs that cover
every batch shape, and the same training under ZeRO-3 (every matrix partitioned, so each call needs its gather) and
under ZeRO-2 (the full recipe's setting: whole weights, gradients reduced by hooks as the backward produces them)."""
from __future__ import annotations

import dataclasses
import importlib
import json

import pytest
import torch
from model_batches import Doc, make_batch, tiny_setup, to_device
from train_parts import PROJECT_ROOT, gathered_state, world_of_one

from jala_ds.model.build import build_model
from jala_ds.train.compiled_blocks import compilations, compile_blocks
from jala_ds.train.ds_config import build_ds_config
from jala_ds.train.engine import build_engine, model_init_context

# Rows differ in number and width, and the batches in their motion chunks and images.
SHAPES = {"two rows": [[Doc()], [Doc(labeled=False), Doc(hands=(1,))]],
          "one row": [[Doc(chunks=1), Doc(hands=(0,), chunks=3)]],
          "three rows": [[Doc(chunks=3)], [Doc(labeled=False, chunks=1)], [Doc(hands=(1,)), Doc(chunks=1)]]}
# The language model and vision tower, traced and differentiated by aot_eager: the graphs inductor would turn
# into kernels, without the minutes of code generation (inductor itself, and the perceivers' six call patterns,
# were checked by hand: docs/performance.md, section 5).
BACKBONE_ONLY = ("model.align=false", "model.lsp_context=false", "model.decoupled_ema=false")


def losses_and_gradients(backend: str | None) -> list[tuple[torch.Tensor, dict[str, torch.Tensor], int]]:
    """For each batch of ``SHAPES``: the loss, every gradient, and the graphs compiled while it ran."""
    cfg, vocab = tiny_setup(*BACKBONE_ONLY)
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    if backend is not None:
        compile_blocks(model, backend)
    results = []
    for seed, rows in enumerate(SHAPES.values()):
        model.zero_grad(set_to_none=True)
        compiled_before = compilations()
        out = model(make_batch(cfg, vocab, rows, seed=seed))
        out.loss.backward()
        gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), gradients, compilations() - compiled_before))
    return results


@pytest.mark.slow
def test_compiled_layers_give_eager_losses_and_gradients_for_every_batch_shape():
    torch._dynamo.reset()
    eager, compiled = losses_and_gradients(None), losses_and_gradients("aot_eager")
    for shape, (loss, gradients, _), (compiled_loss, compiled_gradients, _) in zip(SHAPES, eager, compiled):
        torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6, msg=shape)
        assert compiled_gradients.keys() == gradients.keys(), shape
        # Relative to each gradient's norm, with an absolute floor: some gradients are zero in exact arithmetic
        # (an attention key's bias shifts every logit of a query alike, and softmax ignores that) and are
        # rounding noise in either run.
        excess = {name: float((compiled_gradients[name] - g).norm() - 1e-4 * g.norm() - 1e-6 * g.numel() ** 0.5)
                  for name, g in gradients.items()}
        assert max(excess.values()) <= 0, (shape, sorted(excess.items(), key=lambda item: -item[1])[:3])
    # The first batch compiles every layer class; one row specialises the row count once (size 1 is never
    # symbolic); after that a new number of rows, widths and chunks reuses the graphs.
    assert [count for *_, count in compiled][2] == 0, [count for *_, count in compiled]
    assert [count for *_, count in compiled][0] > 0


@pytest.mark.slow
def test_compiled_layers_with_the_recipe_kernels_take_the_batch_bounds(monkeypatch):
    """The full recipe's path on a GPU: the Triton chunk attention and fused LM ops (interpreted without one)
    inside compiled layers, reading the mask's intervals from the batch: the loss and gradients of eager layers
    with the reference attention and LM ops, within the kernels' own tolerance (``test_model_attention.py``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernel_module = importlib.import_module("jala_kernels.chunk_attention")
    found_on_device, find = [], kernel_module._cached_bounds
    monkeypatch.setattr(kernel_module, "_cached_bounds", lambda *ids: found_on_device.append(ids) or find(*ids))
    torch._dynamo.reset()
    cfg, vocab = tiny_setup(*BACKBONE_ONLY)
    kernels_cfg, _ = tiny_setup("model.attention=triton", "model.fused_ops=true", *BACKBONE_ONLY)
    torch.manual_seed(0)
    eager = build_model(cfg, vocab).to(device)
    compiled = build_model(kernels_cfg, vocab).to(device)
    compiled.load_state_dict(eager.state_dict())
    compile_blocks(compiled, "aot_eager")
    batch = to_device(make_batch(cfg, vocab, [[Doc(chunks=1), Doc(hands=(0,), chunks=1)]]), device)
    losses, grads = [], []
    for model in (eager, compiled):
        out = model(batch)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(model.backbone.model.language_model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)
    assert not found_on_device, "the kernel found the bounds itself instead of reading the batch's"


def zero_training(tmp_path, backend: str | None, stage: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Weights before and after three optimiser steps of the tiny backbone under ZeRO ``stage`` on one rank, one per
    batch shape; under ZeRO-3 with no parameter resident, so each layer call runs between a gather and a release."""
    template = json.loads((PROJECT_ROOT / "ds_configs" / "cpu.json").read_text())
    template["zero_optimization"]["stage"] = stage
    template["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / f"zero{stage}.json").write_text(json.dumps(template))
    cfg, vocab = tiny_setup(f"train.ds_config={tmp_path / f'zero{stage}.json'}", "train.global_batch_size=2",
                            *BACKBONE_ONLY)
    train = dataclasses.replace(cfg.train, compile_blocks=backend)
    ds = build_ds_config(train, world_size=1)
    torch.manual_seed(0)
    with model_init_context(ds):
        model = build_model(cfg, vocab)
    engine = build_engine(model, ds, train, total_steps=len(SHAPES))
    before = gathered_state(engine.module)
    for seed, rows in enumerate(SHAPES.values()):
        engine.backward(engine(make_batch(cfg, vocab, rows, seed=seed)).loss)
        engine.step()
    return before, gathered_state(engine.module)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [3, 2])
def test_compiled_layers_train_like_eager_layers_under_zero(tmp_path, stage):
    with world_of_one():
        initial, eager = zero_training(tmp_path, None, stage)
        _, compiled = zero_training(tmp_path, "aot_eager", stage)
    assert compiled.keys() == eager.keys()
    moved = [name for name in eager if not torch.equal(eager[name], initial[name])]
    assert any("language_model.layers." in name for name in moved)
    assert any("vision_tower.encoder.layer." in name for name in moved)
    drift = {name: float((compiled[name] - value).norm() / value.norm().clamp_min(1e-12))
             for name, value in eager.items()}
    assert max(drift.values()) < 1e-4, sorted(drift.items(), key=lambda item: -item[1])[:5]
