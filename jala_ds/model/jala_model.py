"""JalaModel: the InternVL3 backbone with chunk-mask attention, LSP context, LAP latent actions and both losses.

One training forward, top to bottom (paper eqs. 2, 3, 6):

1. the frozen visual encoder reads each chunk's boundary frames (o_t, o_t+k);
2. token embeddings, image features at ``<IMG_CONTEXT>``, and LSP's latent states of (o_t, o_t) added to the
   chunk's motion tokens (latent m on the m-th of M equal segments);
3. the language model under the chunk mask; the output of layer ``model.align_layer`` at the motion positions is
   the predictive embedding h ``[C, T, d]``;
4. MCP cross-entropy at the labelled positions; alignment of h (pooled to M) with LAP's latent actions z;
   ``loss = mcp_loss + model.align_weight * align_loss``.

    out = model(batch)                 # batch as in docs/architecture.md section 4
    out.loss.backward(); ...; ema.step() over model.ema_pairs()
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers import InternVLForConditionalGeneration

from jala_ds.data.frames import normalized
from jala_ds.model.chunk_mask_attention import prepare_chunk_mask
from jala_ds.model.config import ModelConfig
from jala_ds.model.losses import align_loss, mcp_loss
from jala_ds.model.perceiver import Perceiver
from jala_ds.model.visual_encoder import FrozenFrameEncoder


class JalaOutput(NamedTuple):
    """What one forward returns. A NamedTuple because DeepSpeed's ZeRO-3 hooks only look for tensors inside
    tuples, lists and dicts; a dataclass would hide them (and draw a warning)."""

    loss: torch.Tensor
    """``mcp_loss + align_weight * align_loss``: what the trainer back-propagates."""
    mcp_loss: torch.Tensor
    """Mean cross-entropy over the labelled positions; an exact 0 (still in the graph) when there are none."""
    align_loss: torch.Tensor
    """Distance between pooled predictive embeddings and latent actions; 0 without alignment."""
    predictive: torch.Tensor
    """Predictive embeddings h ``[C, T, d]``: layer ``align_layer``'s output at each chunk's motion tokens."""
    latent_actions: torch.Tensor | None
    """LAP's latent actions z ``[C, M, d]``; None without alignment (no LAP)."""
    n_mcp_tokens: int
    """Labelled positions in the batch: the logged MCP loss is averaged over them (``train/metrics.py``)."""


@dataclass
class _Captured:
    output: torch.Tensor | None = None


@contextlib.contextmanager
def _capture_input(consumer: nn.Module) -> Iterator[_Captured]:
    """The first input of ``consumer`` during the block: a layer's output as the next module receives it. The hook
    is gone before any gradient-checkpointing recompute.

    Not a forward hook on the layer itself: forward hooks see its output before ``nn.Module`` passes it through
    the full-backward-hook wrapper that ZeRO-3's per-block gradient reduction relies on; a gradient reaching the
    layer only through that unwrapped tensor (post-training reads nothing above the alignment layer) would never
    trigger the reduction.
    """
    captured = _Captured()

    def keep(module: nn.Module, args: tuple) -> None:
        captured.output = args[0]

    handle = consumer.register_forward_pre_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


@contextlib.contextmanager
def _running_layers(language_model: nn.Module, layers: int) -> Iterator[None]:
    """The language model runs its first ``layers`` decoder layers during the block (transformers' decoder loop
    reads ``config.num_hidden_layers`` on every call); the config is restored afterwards."""
    config = language_model.config
    total = config.num_hidden_layers
    config.num_hidden_layers = layers
    try:
        yield
    finally:
        config.num_hidden_layers = total


class JalaModel(nn.Module):
    """InternVL3 + chunk-mask attention + LAP/LSP. Parameter names: ``backbone.*``, ``visual_encoder.*``
    (frozen), ``lap.queries``, ``lap.trunk.*``, ``lsp.queries``, ``lsp.trunk.*``."""

    def __init__(self, model_cfg: ModelConfig, backbone: InternVLForConditionalGeneration, tokens_per_chunk: int,
                 vocab_size: int, visual_encoder: FrozenFrameEncoder | None = None, lap: Perceiver | None = None,
                 lsp: Perceiver | None = None):
        super().__init__()
        self.cfg = model_cfg
        self.tokens_per_chunk = tokens_per_chunk
        self.vocab_size = vocab_size  # what the MCP softmax runs over: the LM head's rows past it stand for no token
        self.backbone = backbone
        self.visual_encoder = visual_encoder
        self.lap = lap
        self.lsp = lsp

    def perceiver_pairs(self) -> list[tuple[str, str]]:
        """(target, source) names of every LAP parameter and its LSP twin (equal shapes), in the decoupled EMA's
        direction: LAP's trunk follows LSP's, LSP's queries follow LAP's. Empty unless both perceivers exist."""
        if self.lap is None or self.lsp is None:
            return []
        trunk = [(f"lap.trunk.{name}", f"lsp.trunk.{name}") for name, _ in self.lsp.trunk.named_parameters()]
        return trunk + [("lsp.queries", "lap.queries")]

    def ema_pairs(self) -> list[tuple[str, str]]:
        """The pairs the decoupled EMA updates (``perceiver_pairs``); empty without decoupling."""
        return self.perceiver_pairs() if self.cfg.decoupled_ema else []

    def encode_frames(self, batch: dict) -> torch.Tensor | None:
        """Frozen features ``[C, 2, L, D]`` of every chunk's (o_t, o_t+k); None when no perceiver reads them.
        Each of the batch's frames is encoded once, however many chunks share it."""
        if self.visual_encoder is None:
            return None
        return self.visual_encoder(batch["encoder_frames"])[batch["chunk_frame_index"]]

    def hidden_states(self, batch: dict, frame_features: torch.Tensor | None, *, stop_at_align_layer: bool = False,
                      past_key_values=None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Final hidden states ``[B, N, d]`` and predictive embeddings ``[C, T, d]`` (steps 2 and 3 above).

        ``stop_at_align_layer`` runs only layers 1..``align_layer`` and returns no final states: what a caller
        that reads nothing but h needs (post-training skips a third of InternVL3-2B's language model this way).
        ``past_key_values`` (transformers' cache interface) sees every layer's keys and values: MCP decoding
        records them (``jala_ds/eval/chunk_context.py``).
        """
        chunk_tokens = batch["chunk_tokens"]
        if chunk_tokens.shape != (batch["chunk_hand"].shape[0], self.tokens_per_chunk):
            raise ValueError(f"batch['chunk_tokens'] is {tuple(chunk_tokens.shape)}, but the batch has "
                             f"{batch['chunk_hand'].shape[0]} chunks (len(chunk_hand)) of {self.tokens_per_chunk} "
                             "tokens (motion_tokenizer.tokens_per_chunk): the collate and the model disagree on "
                             "the motion layout")
        embeds = self._input_embeddings(batch, frame_features, chunk_tokens)
        # The batch says which positions attend both ways: documents built for ntp (Being-H0) carry no chunk ids,
        # so its chunks are causal, and the collate's bounds say so without a pass over the ids here.
        doc_ids, chunk_ids = batch["doc_ids"], batch["chunk_ids"]
        language_model = self.backbone.model.language_model
        layers = self.cfg.align_layer if stop_at_align_layer else language_model.config.num_hidden_layers
        # the align layer's output as the next layer (or, after the last layer run, the final norm) receives it
        consumer = language_model.layers[self.cfg.align_layer] if self.cfg.align_layer < layers else language_model.norm
        with _capture_input(consumer) as captured, _running_layers(language_model, layers):
            final = language_model(inputs_embeds=embeds, position_ids=batch["position_ids"],
                                   attention_mask=prepare_chunk_mask(self.cfg.attention, doc_ids, chunk_ids),
                                   doc_ids=doc_ids, chunk_ids=chunk_ids, chunk_bounds=batch["chunk_bounds"],
                                   past_key_values=past_key_values,
                                   use_cache=False).last_hidden_state
        predictive = captured.output.flatten(0, 1)[chunk_tokens]
        return (None if stop_at_align_layer else final), predictive

    def forward(self, batch: dict) -> JalaOutput:
        features = self.encode_frames(batch)
        final, predictive = self.hidden_states(batch, features)
        mcp, n_mcp = mcp_loss(final, batch["labels"], batch["label_positions"], self.backbone.lm_head, self.vocab_size)
        if self.lap is None:
            latent_actions = None
            align = torch.zeros((), device=mcp.device)
        else:
            latent_actions = self.lap(features, batch["chunk_hand"])
            align = align_loss(predictive, latent_actions, self.cfg.align_distance)
        return JalaOutput(loss=mcp + self.cfg.align_weight * align, mcp_loss=mcp, align_loss=align,
                          predictive=predictive, latent_actions=latent_actions, n_mcp_tokens=n_mcp)

    def _input_embeddings(self, batch: dict, frame_features: torch.Tensor | None,
                          chunk_tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings with image features at ``<IMG_CONTEXT>`` and LSP latent states on motion tokens."""
        input_ids = batch["input_ids"]
        embeds = self.backbone.get_input_embeddings()(input_ids)
        pixels = normalized(batch["pixel_values"], self.backbone.dtype)
        image = self.backbone.model.get_image_features(pixel_values=pixels)
        image_positions = batch["image_positions"]
        if image_positions.numel() != image.shape[0] * image.shape[1]:
            raise ValueError(f"batch['input_ids'] holds {image_positions.numel()} <IMG_CONTEXT> tokens but "
                             f"batch['pixel_values'] gives {image.shape[0]} images x {image.shape[1]} tokens: "
                             "size the runs with image_token_count(cfg.model)")
        flat = embeds.flatten(0, 1).index_copy(0, image_positions, image.flatten(0, 1).to(embeds.dtype))
        per_token = self.latent_states_per_token(batch, frame_features)
        if per_token is not None:
            flat = flat.index_add(0, chunk_tokens.flatten(), per_token.flatten(0, 1).to(embeds.dtype))
        return flat.view_as(embeds)

    def latent_states_per_token(self, batch: dict, frame_features: torch.Tensor | None) -> torch.Tensor | None:
        """What LSP adds to each chunk's motion-token embeddings, ``[C, T, d]`` (latent m on the m-th of M equal
        segments); None without LSP context."""
        if self.lsp is None:
            return None
        first_frame_twice = frame_features[:, [0, 0]]
        states = self.lsp(first_frame_twice, batch["chunk_hand"])  # [C, M, d]
        return states.repeat_interleave(self.tokens_per_chunk // states.shape[1], dim=1)
