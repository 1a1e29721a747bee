"""``model.fused_ops``: the language model's RMSNorms and SwiGLU activations as fused Triton kernels.

Half of the H200's kernel time in a training step was outside matrix multiplies and attention, bound by memory
bandwidth (docs/performance.md, section 2). In the language model, eager PyTorch runs each elementwise chain as
one kernel per operator: seven forward for each RMSNorm, with fp32 copies of the activations in between, and two
for the SwiGLU over the MLP's 8960-wide activations. The fused kernels
(``jala_kernels.rms_norm``, ``jala_kernels.swiglu``) read and write each activation once per pass, and launch
one kernel where eager launched many, which the host, which paces the step on Hopper cards, pays for per call.

The modules keep their class's parameters and state-dict keys; only their forward changes, so checkpoints, ZeRO-3
partitioning and the per-block gathers see the same model. On CPU tensors the kernels' dispatchers fall back to
the same eager arithmetic (or Triton's interpreter under ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import torch
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm

from jala_kernels import rms_norm, swiglu


class FusedQwen2RMSNorm(Qwen2RMSNorm):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)


class FusedQwen2MLP(Qwen2MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def fuse_language_model_ops(language_model: torch.nn.Module) -> int:
    """Switch every Qwen2 RMSNorm and SiLU-gated MLP under ``language_model`` to the fused kernels, in place;
    returns how many modules changed (ValueError when none could: not a Qwen2 language model)."""
    changed = 0
    for module in language_model.modules():
        if type(module) is Qwen2RMSNorm:
            module.__class__ = FusedQwen2RMSNorm
            changed += 1
        elif type(module) is Qwen2MLP and module.config.hidden_act == "silu":
            module.__class__ = FusedQwen2MLP
            changed += 1
    if changed == 0:
        raise ValueError(f"model.fused_ops=true: the language model ({type(language_model).__name__}) has no Qwen2 "
                         "RMSNorm or SiLU-gated MLP to fuse: set model.fused_ops=false")
    return changed
