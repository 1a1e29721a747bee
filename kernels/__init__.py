"""jala_kernels: Triton kernels for JALA's two hot spots, and for the language model's memory-bound RMSNorm,
SwiGLU and rotary embedding, each with a plain-PyTorch reference of the same signature.

Imports nothing from jala_ds. Dispatchers pick the Triton kernel for CUDA tensors, the Triton interpreter for
CPU tensors when ``TRITON_INTERPRET=1`` is set, and the reference otherwise.
"""
from jala_kernels.chunk_attention import chunk_attention
from jala_kernels.chunk_attention_bounds import ChunkBounds, chunk_attention_bounds
from jala_kernels.chunk_attention_reference import chunk_attention_reference, chunk_mask
from jala_kernels.grvq import grvq_decode, grvq_encode
from jala_kernels.grvq_reference import grvq_decode_reference, grvq_encode_reference
from jala_kernels.rms_norm import rms_norm, rms_norm_reference
from jala_kernels.rotary import rotary, rotary_reference
from jala_kernels.swiglu import swiglu, swiglu_reference

__all__ = ["ChunkBounds", "chunk_attention", "chunk_attention_bounds", "chunk_attention_reference", "chunk_mask",
           "grvq_decode", "grvq_decode_reference", "grvq_encode", "grvq_encode_reference", "rms_norm",
           "rms_norm_reference", "rotary", "rotary_reference", "swiglu", "swiglu_reference"]
