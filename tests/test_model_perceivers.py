"""Visual encoders feeding the perceivers, the Perceiver's two-hand head and frame order, and model config checks."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from model_batches import Doc, make_batch, tiny_setup

from jala_ds.config_checks import ConfigError
from jala_ds.model.build import build_model
from jala_ds.model.perceiver import Perceiver
from jala_ds.model.visual_encoder import build_visual_encoder


@pytest.mark.parametrize("kind", ["dinov2", "dinov3", "vjepa2"])
def test_each_visual_encoder_is_frozen_and_feeds_the_model(kind):
    cfg, vocab = tiny_setup(f"model.visual_encoder={kind}")
    model = build_model(cfg, vocab).train()
    assert not model.visual_encoder.training, "the frozen encoder stays in eval mode"
    assert not any(p.requires_grad for p in model.visual_encoder.parameters())
    batch = make_batch(cfg, vocab, [[Doc(hands=(1,))]], seed=0)
    features = model.encode_frames(batch)
    assert features.shape[:2] == (2, 2) and features.shape[-1] == model.visual_encoder.hidden_size
    assert not features.requires_grad
    # each shared frame encoded once reads the same as every chunk's pair encoded on its own
    pairs = batch["encoder_frames"][batch["chunk_frame_index"]]
    torch.testing.assert_close(features, model.visual_encoder(pairs), atol=1e-5, rtol=1e-5)
    out = model(batch)
    assert out.latent_actions.shape == (2, cfg.model.perceiver_queries, 64)
    assert torch.isfinite(out.loss)


def perceiver_and_features(seed: int = 0):
    torch.manual_seed(seed)
    perceiver = Perceiver(feature_dim=8, width=16, heads=2, layers=2, queries=4, out_dim=6)
    return perceiver, torch.randn(3, 2, 5, 8)


def test_hand_selects_its_half_of_the_doubled_head():
    perceiver, features = perceiver_and_features()
    with torch.no_grad():
        last = perceiver.trunk.head[-1]
        last.weight[6:] = 0  # silence the right-hand half
        last.bias[6:] = 0
        left = perceiver(features, torch.zeros(3, dtype=torch.long))
        right = perceiver(features, torch.ones(3, dtype=torch.long))
        mixed = perceiver(features, torch.tensor([0, 1, 0]))
    assert bool((right == 0).all()) and bool((left != 0).all())
    torch.testing.assert_close(mixed, torch.stack([left[0], right[1], left[2]]))


def test_perceiver_tells_the_start_frame_from_the_end_frame():
    perceiver, features = perceiver_and_features(1)
    hand = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        forward, backward = perceiver(features, hand), perceiver(features.flip(1), hand)
    assert not torch.allclose(forward, backward, atol=1e-4), "(o_t, o_t+k) and (o_t+k, o_t) must differ"


def test_random_encoder_matches_the_configured_image_size():
    cfg, _ = tiny_setup("model.visual_encoder_image_size=42")
    encoder = build_visual_encoder(cfg.model)
    frames = torch.randint(0, 256, (1, 2, 3, 42, 42), dtype=torch.uint8)
    assert encoder(frames).shape[2] == (42 // 14) ** 2 + 1  # patches + CLS


@pytest.mark.parametrize("overrides, key", [
    (("model.align=false",), "model.decoupled_ema"),
    (("model.lsp_context=false",), "model.decoupled_ema"),
    (("model.perceiver_queries=3",), "model.perceiver_queries"),
    (("model.image_size=50",), "model.image_size"),
    (("model.align_layer=4",), "model.align_layer"),
])
def test_inconsistent_model_settings_are_refused_by_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        tiny_setup(*overrides)


def test_triton_attention_is_refused_without_the_triton_package(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="model.attention: triton needs the triton package"):
        tiny_setup("model.attention=triton")
