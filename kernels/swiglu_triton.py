"""Fused SwiGLU in Triton, as the custom operator ``torch.ops.jala_kernels.swiglu`` with its autograd (imports
Triton: load it only on the kernel path, through ``jala_kernels.swiglu``).

Both passes are elementwise over the flattened tensors, in fp32 registers, rounding where eager rounds: the SiLU
output and the product forward; ``dy * silu(gate)``, ``dy * up`` and the gate's gradient backward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from jala_kernels.triton_mode import built_for_interpreter, check_triton_mode

BLOCK = 1024
"""Elements per program."""
INTERPRETER_BLOCK = 16384
"""The interpreter pays per operation, not per element: large blocks keep the tests quick."""


@triton.jit
def swiglu_forward_kernel(GATE, UP, OUT, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    gate = tl.load(GATE + offs, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(UP + offs, mask=ok, other=0.0).to(tl.float32)
    silu = (gate * tl.sigmoid(gate)).to(OUT.dtype.element_ty).to(tl.float32)
    tl.store(OUT + offs, (silu * up).to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def swiglu_backward_kernel(DOUT, GATE, UP, DGATE, DUP, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    dout = tl.load(DOUT + offs, mask=ok, other=0.0).to(tl.float32)
    gate = tl.load(GATE + offs, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(UP + offs, mask=ok, other=0.0).to(tl.float32)
    sigmoid = tl.sigmoid(gate)
    silu = (gate * sigmoid).to(DUP.dtype.element_ty).to(tl.float32)
    tl.store(DUP + offs, (dout * silu).to(DUP.dtype.element_ty), mask=ok)
    dsilu = (dout * up).to(DGATE.dtype.element_ty).to(tl.float32)
    dgate = dsilu * sigmoid * (1.0 + gate * (1.0 - sigmoid))
    tl.store(DGATE + offs, dgate.to(DGATE.dtype.element_ty), mask=ok)


INTERPRETED = built_for_interpreter(swiglu_forward_kernel)
"""Whether the kernels were built for Triton's CPU interpreter (``TRITON_INTERPRET=1`` when first imported)."""


@torch.library.custom_op("jala_kernels::swiglu", mutates_args=())
def swiglu_op(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for contiguous tensors of one shape and dtype."""
    check_triton_mode("swiglu", gate, INTERPRETED)
    out = torch.empty_like(gate)
    if gate.numel():
        block = INTERPRETER_BLOCK if INTERPRETED else BLOCK
        swiglu_forward_kernel[(triton.cdiv(gate.numel(), block),)](gate, up, out, gate.numel(), BLOCK=block)
    return out


@swiglu_op.register_fake
def _(gate, up):
    return torch.empty_like(gate)


@torch.library.custom_op("jala_kernels::swiglu_backward", mutates_args=())
def swiglu_backward_op(grad_out: torch.Tensor, gate: torch.Tensor,
                       up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dgate, dup)`` in the inputs' shape and dtype."""
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    if gate.numel():
        block = INTERPRETER_BLOCK if INTERPRETED else BLOCK
        swiglu_backward_kernel[(triton.cdiv(gate.numel(), block),)](grad_out, gate, up, dgate, dup, gate.numel(),
                                                                   BLOCK=block)
    return dgate, dup


@swiglu_backward_op.register_fake
def _(grad_out, gate, up):
    return torch.empty_like(gate), torch.empty_like(up)


def _setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gate, up = ctx.saved_tensors
    return swiglu_backward_op(grad_out.contiguous(), gate, up)


swiglu_op.register_autograd(_backward, setup_context=_setup_context)
