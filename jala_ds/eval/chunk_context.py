"""MCP decoding's passes after the first of a chunk run the language model on that chunk alone.

While chunk k is filled, nothing the chunk can see changes except the chunk itself: earlier positions are fixed
(the image, the instruction, chunks already filled), and later ones are hidden from it (attention across chunks
is causal). So the first pass of chunk k runs the whole sequence, as training does, and records every layer's
keys and values (after the rotary embedding) for the rows that hold the chunk. Each further pass runs only the
chunk's T positions through the language model: their new keys and values overwrite theirs in the record, and
their queries attend to the whole record under their rows of the chunk mask. The result equals a full pass at
those positions (``tests/test_eval_chunk_context.py``). The vision tower, the frame encoder and LSP do not run
again, and the language model reads T tokens instead of the sequence's N.

    context = ChunkContext(rows)                                        # the rows holding chunk k
    final, _ = model.hidden_states(batch, features, past_key_values=context)          # first pass: records
    context.start_refreshing(batch, positions)                          # [R, T] positions within each row
    hidden = context.chunk_hidden_states(model, batch, latent_per_token)              # every later pass

The short passes use torch's SDPA with an explicit mask whatever the recipe's attention backend: the chunk-mask
kernels expect queries and keys of one length.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from jala_ds.model.chunk_mask_attention import dense_chunk_mask
from jala_ds.model.jala_model import JalaModel


class ChunkContext:
    """Every language-model layer's keys and values for the rows holding one chunk; the ``update`` of
    transformers' cache interface, which each attention layer calls with its new keys and values."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows
        """int64 ``[R]``: the batch rows whose chunk is being filled."""
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        """Per layer, ``[R, kv_heads, N, head_dim]``."""
        self.positions: torch.Tensor | None = None
        """int64 ``[R, T]``: the chunk's positions within each row, once recorded; None while recording."""
        self.mask: torch.Tensor | None = None
        """bool ``[R, 1, T, N]``: what each of the chunk's positions sees (its rows of the chunk mask)."""

    def start_refreshing(self, batch: dict, positions: torch.Tensor) -> None:
        """Recording is over; later passes over ``batch`` bring new keys and values for ``positions`` ``[R, T]``
        (in-row)."""
        if not self.keys:
            raise RuntimeError("ChunkContext recorded nothing: pass it to JalaModel.hidden_states first, with the "
                               "model in eval mode (transformers drops caches under gradient checkpointing in "
                               "training mode)")
        self.positions = positions
        full = dense_chunk_mask(batch["doc_ids"][self.rows], batch["chunk_ids"][self.rows])  # [R, 1, N, N]
        self.mask = full[torch.arange(len(self.rows), device=positions.device)[:, None], 0, positions][:, None]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """0: a pass never continues a sequence (as generation's cache would); its positions come with it."""
        return 0

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int,
               cache_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.positions is None:  # recording: the whole sequence, for the chunk's rows
            if layer_idx != len(self.keys):
                raise RuntimeError(f"layer {layer_idx} recorded after {len(self.keys)} layers: record one full "
                                   "pass per ChunkContext")
            self.keys.append(key[self.rows])
            self.values.append(value[self.rows])
            return key, value
        row = torch.arange(len(self.rows), device=key.device)[:, None]
        # advanced indices around a slice put their dimensions first: [R, T, kv_heads, head_dim]
        self.keys[layer_idx][row, :, self.positions] = key.transpose(1, 2)
        self.values[layer_idx][row, :, self.positions] = value.transpose(1, 2)
        return self.keys[layer_idx], self.values[layer_idx]

    def chunk_hidden_states(self, model: JalaModel, batch: dict, latent_per_token: torch.Tensor | None) -> torch.Tensor:
        """Final hidden states ``[R, T, d]`` of the chunk's positions for the tokens now in ``batch["input_ids"]``;
        ``latent_per_token`` ``[R, T, d]`` is what LSP adds to them (``JalaModel.latent_states_per_token``)."""
        row = self.rows[:, None]
        ids = batch["input_ids"][row, self.positions]
        embeds = model.backbone.get_input_embeddings()(ids)
        if latent_per_token is not None:
            embeds = embeds + latent_per_token.to(embeds.dtype)
        language_model = model.backbone.model.language_model
        with _attention(language_model.config, "sdpa"):
            # a mapping of masks is used as given: transformers builds no causal mask of its own
            return language_model(inputs_embeds=embeds, position_ids=batch["position_ids"][row, self.positions],
                                  attention_mask={"full_attention": self.mask}, past_key_values=self,
                                  use_cache=False).last_hidden_state


@contextlib.contextmanager
def _attention(config, implementation: str) -> Iterator[None]:
    """The language model's attention implementation is ``implementation`` during the block."""
    before = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = before
