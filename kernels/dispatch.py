"""Where a kernel call runs: Triton for CUDA tensors; for CPU tensors, Triton's interpreter when
``TRITON_INTERPRET`` is set, the plain-PyTorch reference otherwise; and how its fp32 products are taken there.

Every kernel asks here, so one value of the variable or of PyTorch's TF32 switch means the same for all. This
module does not import Triton, nor any kernel: Triton fixes interpreter or compiler for each kernel module when it
is first imported, and a dispatcher's import, or another kernel's, must not be that moment.
"""
from __future__ import annotations

import os

import torch


def interpreter_requested() -> bool:
    """``TRITON_INTERPRET`` as Triton itself parses it (1/true/yes/on/y), read now rather than at import."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def runs_triton(tensor: torch.Tensor) -> bool:
    """Whether a kernel given ``tensor`` runs Triton (compiled or interpreted) rather than its reference."""
    return tensor.is_cuda or interpreter_requested()


KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
"""What the fused kernels compute faithfully: they work in fp32 registers, so a float64 input would come back
with fp32 precision (errors near 1e-7 where the reference's are near 1e-16)."""


def runs_kernel(*tensors: torch.Tensor) -> bool:
    """``runs_triton`` for the first tensor, and every tensor in ``KERNEL_DTYPES``: other dtypes (float64) take
    the reference, which computes in their own precision."""
    return runs_triton(tensors[0]) and all(tensor.dtype in KERNEL_DTYPES for tensor in tensors)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: fp32 inputs get exact fp32 products ("ieee") unless PyTorch's own matmuls may
    use TF32; for fp16/bf16 Triton ignores the setting, and "tf32" is its default."""
    return "ieee" if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32"
