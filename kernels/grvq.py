"""GRVQ dispatchers: the fused Triton kernels where they can run, the plain-PyTorch reference elsewhere.

CUDA tensors go to Triton; CPU tensors go to the Triton interpreter when ``TRITON_INTERPRET=1`` is set at call
time, and to the reference otherwise; float64 inputs always go to the reference (the kernels keep fp32 residuals
and sums). Quantization is not differentiable: the results are outside autograd
(train through them with a straight-through estimator, as the motion tokenizer does).

    codes, quantized = grvq_encode(x, codebooks)      # x [N, D], codebooks [G, R, K, D // G]
    assert torch.equal(grvq_decode(codes, codebooks), quantized)   # exact in fp32
"""
from __future__ import annotations

import torch

from jala_kernels.dispatch import runs_kernel
from jala_kernels.grvq_reference import grvq_decode_reference, grvq_encode_reference


@torch.no_grad()
def grvq_encode(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [N, D]``, ``codebooks [G, R, K, D // G]`` -> ``(codes int64 [N, G, R], quantized [N, D])``."""
    if runs_kernel(x, codebooks):
        from jala_kernels.grvq_triton import grvq_encode_triton

        return grvq_encode_triton(x, codebooks)
    return grvq_encode_reference(x, codebooks)


@torch.no_grad()
def grvq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """``codes [N, G, R]`` -> quantized ``[N, D]`` in the codebooks' dtype."""
    if runs_kernel(codebooks):
        from jala_kernels.grvq_triton import grvq_decode_triton

        return grvq_decode_triton(codes, codebooks)
    return grvq_decode_reference(codes, codebooks)
