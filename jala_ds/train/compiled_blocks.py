"""torch.compile each repeated layer, with DeepSpeed's hooks left outside the compiled code.

The full recipe's step is host-bound on a GPU (docs/performance.md, section 5): Python and kernel launches,
not arithmetic, set its pace. A compiled layer runs its forward as one graph call with fused kernels (norms,
rotary embeddings, gated MLP, residual adds), and its backward as one compiled function too.

What is compiled is each block's ``forward`` (the elements of every ``nn.ModuleList``, as
``zero_leaves.repeated_blocks`` finds them), not the module call: ``Module.__call__`` stays eager, so ZeRO-3's
gather and release hooks run around the compiled code as before, instead of being traced into it (their
collectives and Python bookkeeping would break the graph into pieces).

Recompilation is what makes a compiled layer slow, so the shapes are symbolic from the first call
(``dynamic=True``): packed rows change width every step, the number of rows and of motion chunks changes
with the batch. Layers of one class share one compiled graph. A few recompilations remain, each once: a batch
of one row (size 1 is never symbolic), the perceivers' call patterns (LSP's trunk trains and LAP's does not;
the queries enter the first layer with stride 0), and two sizes that happened to be equal and then differ
(torch first takes them for one symbol). ``compilations()`` counts graphs compiled so far, so a benchmark can
check that none were compiled while it was timing.

    compile_blocks(model, train.compile_blocks)   # "inductor"; after gather_by_block, before deepspeed.initialize
"""
from __future__ import annotations

import torch
from torch import nn

from jala_ds.train.zero_leaves import repeated_blocks


def compile_blocks(model: nn.Module, backend: str) -> list[str]:
    """Replace each repeated block's ``forward`` with its version compiled by torch.compile's ``backend``;
    returns the class names, for the log. ``aot_eager`` traces and differentiates the same graphs as
    ``inductor`` without generating kernels: the tests use it where code generation would cost minutes."""
    blocks = repeated_blocks(model)
    for block in blocks:
        block.forward = torch.compile(block.forward, dynamic=True, backend=backend)
    return sorted({type(block).__name__ for block in blocks})


def compilations() -> int:
    """Graphs torch.compile has compiled in this process so far (first compilations and recompilations)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
