"""The analytic FLOP count against torch's FlopCounterMode on the real modules, the mask reference and MFU.

The full-size modules (InternVL3-2B, DINOv2/v3-B, V-JEPA2-L) run on fake tensors: shapes only, no memory, no
arithmetic, so the reference count costs seconds.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from jala_ds.bench import flops
from jala_ds.bench.cards import CARDS, card
from jala_ds.bench.dims import model_dims, published_encoder_config, vit_dims
from jala_ds.config import load_config
from jala_ds.model.backbone import INTERNVL3_2B_TEXT_VOCAB, backbone_config, internvl3_2b_on_meta, parameter_breakdown
from jala_ds.model.perceiver import Perceiver
from jala_ds.model.visual_encoder import FrozenFrameEncoder
from jala_kernels import chunk_mask


@pytest.fixture(scope="module")
def paper():
    cfg = load_config("pretrain_internvl3_2b")
    return cfg, model_dims(cfg)


def measured(module_on_meta: torch.nn.Module, run) -> tuple[int, int]:
    """(forward, backward) FLOPs FlopCounterMode sees when ``run(module)`` runs on fake tensors.

    SDPA is pinned to its math backend so that attention shows up as the matmuls the counter knows.
    """
    with FakeTensorMode(allow_non_fake_inputs=True), sdpa_kernel(SDPBackend.MATH):
        module = module_on_meta.to_empty(device="cpu")
        with FlopCounterMode(display=False) as forward:
            out = run(module)
        with FlopCounterMode(display=False) as backward:
            if out.requires_grad:
                out.sum().backward()
    return forward.get_total_flops(), backward.get_total_flops()


def on_meta(build):
    with torch.device("meta"):
        return build()


@pytest.mark.parametrize("recipe", ["tiny_cpu", "pretrain_internvl3_2b"])
def test_backbone_forward_flops_equal_flop_counter(recipe):
    cfg = load_config(recipe)
    dims = model_dims(cfg)
    hf = backbone_config(cfg.model.arch, cfg.model.image_size, dims.vocab, image_token_id=0)
    model = on_meta(lambda: transformers.InternVLForConditionalGeneration(hf))
    side = cfg.model.image_size

    vision, _ = measured(model.model.vision_tower, lambda m: m(pixel_values=torch.randn(1, 3, side, side))[0])
    assert vision == flops.vit_flops(dims.vision.vit)
    tokens = dims.vision.image_tokens
    projector, _ = measured(model.model.multi_modal_projector,
                            lambda m: m(torch.randn(1, tokens, dims.vision.projector_in)))
    assert projector == 2 * dims.vision.projector_params * tokens
    head, _ = measured(model.lm_head, lambda m: m(torch.randn(1, 10, dims.lm.hidden)))
    assert head == 2 * dims.lm.hidden * dims.vocab * 10


def test_language_model_flops_and_backward_is_twice_forward(paper):
    _, dims = paper
    n = 576
    hf = backbone_config("internvl3_2b", 448, dims.vocab, image_token_id=0)
    model = on_meta(lambda: transformers.InternVLForConditionalGeneration(hf))
    embeds = torch.randn(1, n, dims.lm.hidden, requires_grad=True)
    forward, backward = measured(model.model.language_model, lambda m: m(inputs_embeds=embeds).last_hidden_state)
    # A dense SDPA computes all n^2 pairs; RoPE's tiny frequency matmul is the only op the count leaves out.
    assert forward == pytest.approx(flops.transformer_flops(dims.lm, n, n * n), rel=1e-6)
    assert backward == pytest.approx(2 * forward, rel=1e-6)


@pytest.mark.parametrize("kind, cls", [("dinov2", "Dinov2Model"), ("dinov3", "DINOv3ViTModel"),
                                       ("vjepa2", "VJEPA2Model")])
def test_frame_encoder_flops_equal_flop_counter(kind, cls):
    config = published_encoder_config(kind, 224)
    if kind == "dinov2":
        config.image_size = 224  # same FLOPs; the fake-tensor run cannot interpolate a 518 px position table
    encoder = on_meta(lambda: getattr(transformers, cls)(config))
    frames = torch.randint(0, 256, (1, 2, 3, 224, 224), dtype=torch.uint8)
    forward, _ = measured(encoder, lambda m: FrozenFrameEncoder(m, kind)(frames))
    assert forward == 2 * flops.vit_flops(vit_dims(config, 224))


def test_perceiver_flops_equal_flop_counter(paper):
    _, dims = paper
    p = dims.perceiver
    perceiver = Perceiver(p.feature_dim, p.width, p.heads, p.layers, p.queries, p.out_dim)
    features = torch.randn(3, 2, dims.frame_encoder.tokens, p.feature_dim)
    forward, _ = measured(perceiver, lambda m: m(features, torch.tensor([0, 1, 0])))
    assert forward == 3 * flops.perceiver_flops(p, 2 * dims.frame_encoder.tokens)


def test_parameter_counts_match_the_published_internvl3_2b(paper):
    _, dims = paper
    published = parameter_breakdown(internvl3_2b_on_meta())
    ours = dataclasses.replace(dims, vocab=INTERNVL3_2B_TEXT_VOCAB).params_by_part()
    # Ours leaves out biases and norm scales: within 0.2 % of the real modules.
    for part in ("vision_tower", "projector", "language_model", "lm_head"):
        key = "vision" if part == "vision_tower" else part
        assert ours[part] == pytest.approx(published[key], rel=2e-3)
    assert ours["vision_tower"] == pytest.approx(304e6, rel=5e-3)
    assert ours["projector"] == pytest.approx(9e6, abs=0.5e6)
    assert ours["language_model"] == pytest.approx(1.54e9, rel=5e-3)
    assert ours["lm_head"] == pytest.approx(233e6, rel=5e-3)


def test_paper_sample_is_576_tokens_and_costs_7_1_tflop(paper):
    cfg, dims = paper
    count = flops.recipe_flops(cfg, dims=dims)
    assert count.shape.lm_tokens == 576  # 256 image + 60 text + 2 x (128 + <mot> + </mot>)
    # The number we defend (docs/performance.md): 7.02 TFLOP, within 1 %.
    assert count.per_sample == pytest.approx(7.02e12, rel=0.01)
    # DESIGN.md's 6.4 TFLOP is 6 x (every parameter but the untied head) x 576 tokens: same dims, its arithmetic.
    parts = dataclasses.replace(dims, vocab=INTERNVL3_2B_TEXT_VOCAB).params_by_part()
    design = 6 * (parts["vision_tower"] + parts["projector"] + parts["language_model"]) * 576
    assert design == pytest.approx(6.4e12, rel=0.01)


def test_attended_pairs_equal_the_reference_mask():
    shape = flops.SampleShape(image_tokens=4, text_tokens=6, chunks=3, frames=4, chunk_tokens=5, loss_tokens=0)
    layout = [-1] * (shape.image_tokens + shape.text_tokens)
    for chunk in range(shape.chunks):
        layout += [-1] + [chunk] * shape.chunk_tokens + [-1]  # <mot> codes </mot>
    chunk_ids = torch.tensor([layout], dtype=torch.int32)
    doc_ids = torch.zeros_like(chunk_ids)
    assert shape.lm_tokens == len(layout)
    assert shape.attended_pairs == chunk_mask(doc_ids, chunk_ids).sum().item()
    causal = dataclasses.replace(shape, bidirectional_chunks=False)
    assert causal.attended_pairs == chunk_mask(doc_ids, torch.full_like(chunk_ids, -1)).sum().item()


def test_expected_loss_tokens_follow_the_masking_rule(paper):
    cfg, dims = paper
    labelled = load_config("pretrain_internvl3_2b", ["data.labeled_only=true"])
    # Target chunk: mean ratio (0.3 + 1) / 2 of 128 tokens; the other chunk comes after it half the time (p = 0.05).
    assert flops.sample_shape(labelled, dims).loss_tokens == pytest.approx(128 * (0.65 + 0.05 * 0.5))
    assert flops.sample_shape(cfg, dims).loss_tokens == pytest.approx(128 * 0.675 * 5 / 7.5)


def test_passes_follow_what_trains(paper):
    cfg, dims = paper
    shape = flops.sample_shape(cfg, dims)
    full = flops.count_flops(dims, shape)
    by_name = {part.name: part for part in full.parts}
    assert (by_name["vision tower"].passes, by_name["frame encoder"].passes) == (3, 1)
    assert (by_name["LSP"].passes, by_name["LAP"].passes) == (3, 2)
    frozen = flops.count_flops(dims, shape, vision_trained=False)
    assert full.per_sample - frozen.per_sample == pytest.approx(2 * by_name["vision tower"].forward)
    no_align = flops.count_flops(dims, shape, align=False)
    assert full.per_sample - no_align.per_sample == pytest.approx(by_name["LAP"].train)
    joint = {p.name: p for p in flops.count_flops(dims, shape, decoupled_ema=False).parts}
    assert joint["LAP"].passes == 3


def test_mfu_against_peak_and_device_names():
    # The paper: 7.5M samples in 68 h on 8 A800s at 7.0 TFLOP each is 8.6 % of peak.
    assert flops.mfu(7.02e12, 7.5e6 / (68 * 3600), 8, "a800") == pytest.approx(0.0862, abs=5e-4)
    assert flops.mfu(1e12, 989.0, 1, "NVIDIA H100 80GB HBM3") == pytest.approx(1.0)
    assert card("NVIDIA H100 PCIe").name == "h100-pcie"
    assert card("NVIDIA H200").name == "h200" and card("NVIDIA H20").name == "h20"
    assert card("NVIDIA A800-SXM4-80GB") is CARDS["a800"]
    with pytest.raises(ValueError, match="unknown GPU 'CPU.*a800"):
        flops.mfu(1e12, 1.0, 1, "CPU (x86_64, 2 cores)")
    with pytest.raises(ValueError, match="n_gpus >= 1"):
        flops.mfu(1e12, 1.0, 0, "a800")
