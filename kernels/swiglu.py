"""SwiGLU, ``silu(gate) * up``, the gated activation between the Qwen2 MLP's projections, fused where Triton runs.

Eager PyTorch runs it as two kernels forward and three backward over the MLP's widest activations
(8960 features per token in InternVL3-2B's language model); the fused kernels read and write each element once
per pass, and keep eager's roundings (the SiLU output is rounded to the input dtype before the product).

    h = swiglu(gate, up)          # same shapes -> same shape and dtype

CUDA tensors go to Triton; CPU tensors to the Triton interpreter when ``TRITON_INTERPRET=1`` is set at call time,
and to ``swiglu_reference`` otherwise (float64 too).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jala_kernels.dispatch import runs_kernel


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Qwen2MLP's activation, written out: the definition the kernel is checked against."""
    return F.silu(gate) * up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``, differentiable in both."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} {up.dtype} must "
                         "have one shape and dtype (the gate_proj and up_proj outputs)")
    if gate.device != up.device:
        raise ValueError(f"swiglu: gate is on {gate.device} but up on {up.device}: put both on one device")
    if not runs_kernel(gate):
        return swiglu_reference(gate, up)
    import jala_kernels.swiglu_triton  # noqa: F401  registers torch.ops.jala_kernels.swiglu

    return torch.ops.jala_kernels.swiglu(gate.contiguous(), up.contiguous())
