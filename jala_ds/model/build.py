"""build_model: the one constructor of JalaModel, used by training, evaluation and tests alike.

    cfg = load_config("tiny_cpu")
    tok = load_text_tokenizer(cfg.model.pretrained, cfg.model.arch)
    vocab = add_motion_vocab(tok, cfg.motion_tokenizer.vocab_per_part)
    model = build_model(cfg, vocab)

The backbone is the checkpoint in ``model.pretrained`` or a random ``model.arch``; the VLM (vision tower
included) trains, as in the paper's pretraining. The perceivers' visual encoder is frozen. LAP starts equal to
LSP; with ``model.decoupled_ema`` the EMA targets (LAP's trunk, LSP's queries) then take no gradient.
"""
from __future__ import annotations

import torch

from jala_ds.config import JalaConfig
from jala_ds.model.backbone import pretrained_backbone, random_backbone
from jala_ds.model.chunk_mask_attention import attention_implementation, register_chunk_attention
from jala_ds.model.fused_lm_ops import fuse_language_model_ops
from jala_ds.model.jala_model import JalaModel
from jala_ds.model.perceiver import Perceiver
from jala_ds.model.visual_encoder import build_visual_encoder
from jala_ds.model.zero_gather import gathered_for_edit
from jala_ds.vocab import MotionVocab


def build_model(cfg: JalaConfig, vocab: MotionVocab) -> JalaModel:
    """JalaModel for recipe ``cfg`` over vocabulary ``vocab`` (from the checkpoint's tokenizer + motion tokens)."""
    model_cfg = cfg.model
    if vocab.vocab_per_part != cfg.motion_tokenizer.vocab_per_part:
        raise ValueError(f"the vocabulary has {vocab.vocab_per_part} motion codes per part but the recipe's "
                         f"motion_tokenizer has {cfg.motion_tokenizer.vocab_per_part}: build the vocabulary with "
                         "add_motion_vocab(tok, cfg.motion_tokenizer.vocab_per_part)")
    register_chunk_attention()
    backbone = pretrained_backbone(model_cfg, vocab) if model_cfg.pretrained else random_backbone(model_cfg, vocab)
    backbone.set_attn_implementation({"text_config": attention_implementation(model_cfg.attention)})
    if model_cfg.fused_ops:
        fuse_language_model_ops(backbone.model.language_model)
    if model_cfg.gradient_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    encoder = build_visual_encoder(model_cfg) if model_cfg.align or model_cfg.lsp_context else None

    def perceiver() -> Perceiver:
        return Perceiver(feature_dim=encoder.hidden_size, width=model_cfg.perceiver_width,
                         heads=model_cfg.perceiver_heads, layers=model_cfg.perceiver_layers,
                         queries=model_cfg.perceiver_queries, out_dim=backbone.config.text_config.hidden_size)

    model = JalaModel(model_cfg, backbone, cfg.motion_tokenizer.tokens_per_chunk, vocab.size, visual_encoder=encoder,
                      lap=perceiver() if model_cfg.align else None,
                      lsp=perceiver() if model_cfg.lsp_context else None)
    _start_shared(model)
    return model


def _start_shared(model: JalaModel) -> None:
    """LAP and LSP start as one set of weights (the paper's shared weights), with decoupling or without it, so
    that the 'w/o dec.' ablation differs from JALA in its updates alone. Under decoupling the EMA targets are
    then never optimised."""
    params = dict(model.named_parameters())
    pairs = model.perceiver_pairs()
    follow_by_ema = {target for target, _ in model.ema_pairs()}
    with gathered_for_edit([params[name] for pair in pairs for name in pair]), torch.no_grad():
        for target, source in pairs:
            params[target].copy_(params[source])
            if target in follow_by_ema:
                params[target].requires_grad_(False)
