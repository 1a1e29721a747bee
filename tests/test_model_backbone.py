"""The backbone: published InternVL3-2B size, motion vocabulary rows (padded to a multiple of 64), image tokens, and
reloading a checkpoint."""
from __future__ import annotations

import pytest
import torch
from model_batches import Doc, make_batch, tiny_setup

from jala_ds.model.backbone import (
    add_motion_rows,
    image_token_count,
    internvl3_2b_on_meta,
    parameter_breakdown,
    random_backbone,
)
from jala_ds.model.build import build_model
from jala_ds.vocab import add_motion_vocab, byte_level_tokenizer, load_text_tokenizer


def test_internvl3_2b_on_meta_has_the_published_size():
    parts = parameter_breakdown(internvl3_2b_on_meta())
    # Published (InternVL3 report / model card): 2.09B = vision 304M + projector 9M + LM 1.54B with a 233M head.
    published = {"vision": 304e6, "projector": 9e6, "language_model": 1.54e9, "lm_head": 233e6, "total": 2.09e9}
    rounding = {"vision": 0.5e6, "projector": 0.5e6, "language_model": 5e6, "lm_head": 0.5e6, "total": 5e6}
    for part, size in published.items():
        assert abs(parts[part] - size) <= rounding[part], f"{part}: {parts[part]:,} vs published {size:,.0f}"
    # The same numbers from the published config by hand (InternViT-300M, MLP projector, Qwen2.5-1.5B-like LM).
    d, f, patches = 1024, 4096, (448 // 14) ** 2
    vision_layer = 4 * (d * d + d) + 4 * d + 2 * d + 2 * d * f + f + d  # qkv+proj, 2 norms, 2 layer scales, MLP
    vision = d + (patches + 1) * d + 3 * 14 * 14 * d + d + 24 * vision_layer
    h, kv, ff, vocab = 1536, 256, 8960, 151674
    lm_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * ff + 2 * h
    expected = {"vision": vision, "projector": 2 * 4 * d + 4 * d * h + h + h * h + h,
                "language_model": vocab * h + 28 * lm_layer + h, "lm_head": vocab * h}
    expected["total"] = sum(expected.values())
    assert parts == expected


def test_motion_rows_start_at_the_text_mean_in_embedding_and_head():
    cfg, vocab = tiny_setup()
    backbone = random_backbone(cfg.model, vocab)
    for weight in (backbone.get_input_embeddings().weight, backbone.lm_head.weight):
        assert weight.shape[0] == vocab.rows
        mean = weight[:vocab.mot_start].mean(dim=0)
        assert torch.equal(weight[vocab.mot_start:vocab.size], mean.expand(vocab.size - vocab.mot_start, -1))
    assert backbone.config.text_config.vocab_size == vocab.rows


def test_embedding_and_head_rows_are_the_vocabulary_rounded_up_to_64():
    """The full recipe's 159,869 tokens (published text vocabulary, 3 markers, 2 x 4096 codes) get 159,872 rows:
    the LM head's matrix products then have aligned leading dimensions."""
    published = add_motion_vocab(load_text_tokenizer(None, "internvl3_2b"), 4096)
    assert (published.size, published.rows) == (159_869, 159_872)
    _, tiny = tiny_setup()
    assert tiny.rows % 64 == 0 and 0 <= tiny.rows - tiny.size < 64


def test_mcp_loss_leaves_the_rows_past_the_vocabulary_out_of_its_softmax():
    cfg, vocab = tiny_setup()
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    batch = make_batch(cfg, vocab, [[Doc()], [Doc()]], seed=0)
    assert vocab.rows > vocab.size
    with torch.no_grad():
        before = model(batch).mcp_loss
        model.backbone.lm_head.weight[vocab.size:] = 100.0  # logits no softmax over the vocabulary could ignore
        after = model(batch).mcp_loss
    assert torch.equal(before, after)


def test_a_checkpoint_saved_before_the_rows_were_padded_keeps_its_motion_rows():
    cfg, vocab = tiny_setup()
    torch.manual_seed(0)
    old = random_backbone(cfg.model, vocab)
    old.resize_token_embeddings(vocab.size, mean_resizing=False)  # as JALA saved it: one row per token
    with torch.no_grad():
        for weight in (old.get_input_embeddings().weight, old.lm_head.weight):
            weight[vocab.mot_start:] = torch.randn_like(weight[vocab.mot_start:])  # trained motion rows
    trained = [w.detach().clone() for w in (old.get_input_embeddings().weight, old.lm_head.weight)]
    add_motion_rows(old, vocab)
    for weight, before in zip((old.get_input_embeddings().weight, old.lm_head.weight), trained):
        assert weight.shape[0] == vocab.rows
        assert torch.equal(weight[:vocab.size], before)


@pytest.mark.parametrize("side, tokens", [(56, 4), (448, 256)])
def test_image_token_count_matches_the_vision_tower(side, tokens):
    cfg, _ = tiny_setup(f"model.image_size={side}")
    assert image_token_count(cfg.model) == tokens
    if side == 56:  # the 448 px tower is checked through the published shape only (no need to run it)
        _, vocab = tiny_setup()
        backbone = random_backbone(cfg.model, vocab)
        features = backbone.model.get_image_features(pixel_values=torch.randn(2, 3, side, side))
        assert features.shape[:2] == (2, tokens)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny JALA trained one step, saved the way real checkpoints come: VLM + tokenizer, visual encoder."""
    cfg, _ = tiny_setup()
    tok = byte_level_tokenizer()
    vocab = add_motion_vocab(tok, cfg.motion_tokenizer.vocab_per_part)
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    batch = make_batch(cfg, vocab, [[Doc()], [Doc(labeled=False)]], seed=0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(batch).loss.backward()
    optimizer.step()
    root = tmp_path_factory.mktemp("checkpoint")
    model.backbone.save_pretrained(root / "vlm")
    tok.save_pretrained(root / "vlm")
    model.visual_encoder.encoder.save_pretrained(root / "encoder")
    return model.eval(), batch, root


def test_saved_checkpoint_reloads_through_the_builder(saved):
    model, batch, root = saved
    cfg, _ = tiny_setup(f"model.pretrained={root / 'vlm'}", f"model.visual_encoder_path={root / 'encoder'}")
    vocab = add_motion_vocab(load_text_tokenizer(cfg.model.pretrained), cfg.motion_tokenizer.vocab_per_part)
    reloaded = build_model(cfg, vocab).eval()
    expected = model.state_dict()
    for name, value in reloaded.state_dict().items():
        if name.startswith(("backbone.", "visual_encoder.")):
            assert torch.equal(value, expected[name]), f"{name} changed through save/reload"
    # The perceivers live in the trainer's checkpoint, not in the VLM folder.
    reloaded.load_state_dict(expected)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch).loss, model(batch).loss, rtol=0, atol=0)


@pytest.mark.parametrize("override, key", [("model.align_layer=4", "model.align_layer"),
                                           ("model.image_size=112", "model.image_size")])
def test_checkpoint_mismatch_names_the_recipe_key(saved, override, key):
    _, _, root = saved
    cfg, vocab = tiny_setup(f"model.pretrained={root / 'vlm'}", override)
    with pytest.raises(ValueError, match=key):
        build_model(cfg, vocab)



def _copy_without(src, dst, drop_tensors=(), drop_files=()):
    """A copy of checkpoint folder ``src`` lacking the tensors whose names contain one of ``drop_tensors``."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for name in drop_files:
        (dst / name).unlink()
    if drop_tensors:
        weights = load_file(str(dst / "model.safetensors"))
        kept = {k: v for k, v in weights.items() if not any(part in k for part in drop_tensors)}
        assert len(kept) < len(weights)
        save_file(kept, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_a_checkpoint_missing_weights_is_refused_not_filled_at_random(saved, tmp_path):
    """transformers only logs the weights it initialises at random; the projector would train from noise."""
    _, _, root = saved
    partial = _copy_without(root / "vlm", tmp_path / "vlm", drop_tensors=["multi_modal_projector"])
    cfg, vocab = tiny_setup(f"model.pretrained={partial}")
    with pytest.raises(ValueError, match=f"model.pretrained={partial} does not hold every InternVL weight "
                                         r"\(missing keys \['model.multi_modal_projector"):
        build_model(cfg, vocab)


def test_a_folder_of_another_model_or_without_config_is_refused_by_name(saved, tmp_path):
    """Either would otherwise load as a default InternVL config: a 7B-shaped language model at random."""
    from transformers import Qwen2Config

    _, _, root = saved
    Qwen2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=4).save_pretrained(tmp_path / "qwen")
    no_config = _copy_without(root / "vlm", tmp_path / "no_config", drop_files=["config.json"])
    for folder, error, says in [(tmp_path / "qwen", ValueError, "holds a 'qwen2' model, not an InternVL"),
                                (no_config, FileNotFoundError, "has no config.json")]:
        cfg, vocab = tiny_setup(f"model.pretrained={folder}")
        with pytest.raises(error, match=f"model.pretrained={folder} {says}"):
            build_model(cfg, vocab)


def test_a_folder_without_tokenizer_files_names_the_folder(saved, tmp_path):
    _, _, root = saved
    bare = _copy_without(root / "vlm", tmp_path / "vlm", drop_files=["tokenizer.json", "tokenizer_config.json",
                                                                      "special_tokens_map.json"])
    with pytest.raises(FileNotFoundError, match=f"model.pretrained={bare} .* must hold the checkpoint's tokenizer"):
        load_text_tokenizer(str(bare))


def test_a_visual_encoder_missing_weights_is_refused(saved, tmp_path):
    from jala_ds.model.visual_encoder import build_visual_encoder

    _, _, root = saved
    partial = _copy_without(root / "encoder", tmp_path / "encoder", drop_tensors=["layernorm.weight"])
    cfg, _ = tiny_setup(f"model.visual_encoder_path={partial}")
    with pytest.raises(ValueError, match=f"model.visual_encoder_path={partial} lacks weights of its Dinov2Model"):
        build_visual_encoder(cfg.model)


def test_a_moved_export_loads_its_own_backbone_not_the_folder_it_was_written_to(saved, tmp_path):
    """An export's recipe names the folder it was written to; a copy elsewhere must not read that one's weights."""
    import shutil

    from safetensors.torch import save_file

    from jala_ds.eval.trained_model import load_trained_model
    from jala_ds.train.export import HEADS_FILE, RECIPE_FILE

    model, batch, root = saved
    cfg, _ = tiny_setup()
    first = tmp_path / "export"
    shutil.copytree(root / "vlm", first)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("backbone.")},
              str(first / HEADS_FILE))
    cfg.model.pretrained = str(first.resolve())
    cfg.dump(first / RECIPE_FILE)
    shutil.copytree(first, tmp_path / "moved")
    with torch.no_grad():  # the original folder then changes (re-exported from a later step, say)
        other = model.backbone.__class__.from_pretrained(first)
        other.lm_head.weight.add_(1.0)
        other.save_pretrained(first)
    trained = load_trained_model(tmp_path / "moved", device="cpu")
    assert trained.cfg.model.pretrained == str((tmp_path / "moved").resolve())
    with torch.no_grad():
        torch.testing.assert_close(trained.model(batch).loss, model(batch).loss, rtol=0, atol=0)


def test_without_a_checkpoint_a_published_arch_gets_its_vocabulary_size():
    """A random-weight InternVL3-2B has the real embedding and LM head shapes (memory and FLOPs as published)."""
    from jala_ds.model.backbone import INTERNVL3_2B_TEXT_VOCAB

    padded, plain = load_text_tokenizer(None, "internvl3_2b"), load_text_tokenizer(None, "tiny")
    assert len(padded) == INTERNVL3_2B_TEXT_VOCAB and len(plain) == 260
    text = "pick up the red cup"
    assert padded(text)["input_ids"] == plain(text)["input_ids"]  # fillers are never produced by text
    assert padded.convert_tokens_to_ids("<IMG_CONTEXT>") == INTERNVL3_2B_TEXT_VOCAB - 1


def test_fused_ops_switch_every_norm_mlp_and_attention_of_the_language_model_and_nothing_else():
    from jala_ds.model.fused_lm_ops import (
        FUSED,
        FusedQwen2Attention,
        FusedQwen2MLP,
        FusedQwen2RMSNorm,
        fuse_language_model_ops,
    )

    cfg, vocab = tiny_setup("model.fused_ops=true")
    model = build_model(cfg, vocab)
    plain = build_model(tiny_setup()[0], vocab)
    lm = model.backbone.model.language_model
    layers = lm.config.num_hidden_layers
    assert sum(isinstance(m, FusedQwen2RMSNorm) for m in lm.modules()) == 2 * layers + 1  # two per layer, final
    assert sum(isinstance(m, FusedQwen2MLP) for m in lm.modules()) == layers
    assert sum(isinstance(m, FusedQwen2Attention) for m in lm.modules()) == layers
    assert not any(type(m) in FUSED for m in model.modules())
    assert not any(type(m) in FUSED.values() for m in model.backbone.model.vision_tower.modules())
    assert model.state_dict().keys() == plain.state_dict().keys()  # checkpoints load either way
    with pytest.raises(ValueError, match="model.fused_ops=false"):
        fuse_language_model_ops(model.backbone.model.vision_tower)
