"""``model.fused_ops``: the language model's RMSNorms, SwiGLU activations and rotary embeddings as fused Triton
kernels.

Half of the H200's kernel time in a training step was outside matrix multiplies and attention, bound by memory
bandwidth (docs/performance.md, section 2). In the language model, eager PyTorch runs each elementwise chain as
one kernel per operator: seven forward for each RMSNorm, with fp32 copies of the activations in between, two
for the SwiGLU over the MLP's 8960-wide activations, five for each of q and k's rotary embedding. The fused
kernels (``jala_kernels.rms_norm``, ``swiglu``, ``rotary``) read and write each activation once per pass, and
launch one kernel where eager launched many, which the host, which paces the step on Hopper cards, pays for per
call. ``benchmarks/lm_traffic.py`` counts both.

The modules keep their class's parameters and state-dict keys; only their forward changes, so checkpoints, ZeRO-3
partitioning and the per-block gathers see the same model. The attention's forward is transformers' (4.57) with
the rotation swapped; ``tests/test_model_attention.py`` holds the fused model to eager's loss and gradients. On
CPU tensors the kernels' dispatchers fall back to the same eager arithmetic (or to Triton's interpreter under
``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2MLP, Qwen2RMSNorm, eager_attention_forward

from jala_kernels import rms_norm, rotary, swiglu


class FusedQwen2RMSNorm(Qwen2RMSNorm):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)


class FusedQwen2MLP(Qwen2MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class FusedQwen2Attention(Qwen2Attention):
    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None, past_key_values=None, cache_position=None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        cos, sin = position_embeddings
        query = rotary(self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2), cos, sin)
        key = rotary(self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2), cos, sin)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx,
                                                {"sin": sin, "cos": cos, "cache_position": cache_position})
        attention = (eager_attention_forward if self.config._attn_implementation == "eager"
                     else ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation])
        output, weights = attention(self, query, key, value, attention_mask,
                                    dropout=0.0 if not self.training else self.attention_dropout,
                                    scaling=self.scaling, sliding_window=self.sliding_window, **kwargs)
        return self.o_proj(output.reshape(*input_shape, -1).contiguous()), weights


FUSED = {Qwen2RMSNorm: FusedQwen2RMSNorm, Qwen2MLP: FusedQwen2MLP, Qwen2Attention: FusedQwen2Attention}
"""Each transformers class and the subclass that runs it with the fused kernels."""


def fuse_language_model_ops(language_model: torch.nn.Module) -> int:
    """Switch every Qwen2 RMSNorm, SiLU-gated MLP and attention under ``language_model`` to the fused kernels, in
    place; returns how many modules changed (ValueError when none could: not a Qwen2 language model)."""
    changed = 0
    for module in language_model.modules():
        fused = FUSED.get(type(module))
        if fused is FusedQwen2MLP and module.config.hidden_act != "silu":
            continue
        if fused is not None:
            module.__class__ = fused
            changed += 1
    if changed == 0:
        raise ValueError(f"model.fused_ops=true: the language model ({type(language_model).__name__}) has no Qwen2 "
                         "RMSNorm, SiLU-gated MLP or attention to fuse: set model.fused_ops=false")
    return changed
