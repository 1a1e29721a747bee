"""One clear error when a kernel call mixes Triton's two modes.

Triton builds its own library (``tl.max``, ...) for the interpreter or the compiler when it is first imported,
and each ``@triton.jit`` kernel when its module is; a mix, or compiled kernels given CPU tensors, fails deep inside
Triton instead.
"""
from __future__ import annotations

import torch
import triton.language as tl
from triton.runtime import JITFunction
from triton.runtime.interpreter import InterpretedFunction


def built_for_interpreter(kernel: JITFunction | InterpretedFunction) -> bool:
    """Whether ``kernel`` was built for Triton's CPU interpreter (``TRITON_INTERPRET=1`` when first imported)."""
    return isinstance(kernel, InterpretedFunction)


def check_triton_mode(op: str, tensor: torch.Tensor, kernels_interpreted: bool) -> None:
    """Raise unless Triton's library and ``op``'s kernels were built for one mode that can take ``tensor``."""
    library_interpreted = isinstance(tl.max, InterpretedFunction)
    if library_interpreted != kernels_interpreted or (not tensor.is_cuda and not kernels_interpreted):
        raise RuntimeError(
            f"{op}: Triton was imported for the {'interpreter' if library_interpreted else 'GPU'} and "
            f"jala_kernels' kernels for the {'interpreter' if kernels_interpreted else 'GPU'}, with {tensor.device} "
            "tensors; set TRITON_INTERPRET=1 before anything imports triton to run on CPU, and leave it unset on a "
            "GPU")
