"""jala_kernels: Triton kernels for JALA's two hot spots, each with a plain-PyTorch reference of the same signature.

Imports nothing from jala_ds. Dispatchers pick the Triton kernel for CUDA tensors, the Triton interpreter for
CPU tensors when ``TRITON_INTERPRET=1`` is set, and the reference otherwise.
"""
from jala_kernels.chunk_attention_reference import chunk_attention_reference, chunk_mask

__all__ = ["chunk_attention_reference", "chunk_mask"]
