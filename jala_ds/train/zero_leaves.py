"""Under ZeRO-3, gather parameters block by block instead of module by module.

DeepSpeed's ZeRO-3 hooks every sub-module: before it runs its parameters are all-gathered, after it they are
released, and the backward does it again. A transformer layer holds about ten sub-modules (four attention
projections, three MLP matrices, norms), so InternVL3-2B with its frame encoder and perceivers crosses ~700
hook pairs per pass, each costing Python time whatever the tensor sizes. Marking a block as a ZeRO-3 *leaf*
moves the hooks to the block: one gather of all its parameters before it runs, one release after. The bytes
on the wire are the same (prefetching already fetched a layer ahead); only the per-call overhead goes.

One catch, from how DeepSpeed reduces a leaf's gradients: in a hook on the block's gradient *with respect to its
inputs*. When no input requires grad (the first trained layer after a frozen embedding or vision tower, as in
post-training), PyTorch fires that hook as soon as the output's gradient exists, before any weight gradient of the
block: DeepSpeed would reduce zeros and leave the real gradients behind. So a trained block whose inputs carry no
gradient gets its first tensor input turned into one that does (``_inputs_need_grad``); the only cost is the
input gradient of that one layer. Two rules follow for the model's code: read a block's output as its call
returns it, never from a forward hook on the block (that tensor bypasses the wrapper the backward hook listens
on: ``JalaModel`` reads the alignment layer's output as its consumer's input); and a trained block runs in every
step (DeepSpeed counts on each one's hook; post-training freezes the layers it skips).

The blocks are the elements of every ``nn.ModuleList``: that is how transformers (and our perceivers and action
head) hold repeated layers, so the rule needs no per-backbone list of class names. DeepSpeed's own heuristic
(``stage3_module_granularity_threshold``, parameters per descendant) picks parents first, so it turns a whole
model under 1e9 parameters (the InternViT tower, or all of a small model) into one leaf; ours keeps layer-wise
prefetching.

    if train.zero3_gather_by_block: gather_by_block(model)      # before deepspeed.initialize
"""
from __future__ import annotations

import torch
from torch import nn


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """Every element of every ``nn.ModuleList`` that holds parameters, outermost first; a ModuleList inside an
    element already chosen is covered by it and skipped."""
    blocks: list[nn.Module] = []
    covered: set[int] = set()
    for module in model.modules():
        if id(module) in covered or not isinstance(module, nn.ModuleList):
            continue
        for block in module:
            if next(block.parameters(), None) is not None:
                blocks.append(block)
                covered.update(id(inner) for inner in block.modules())
    return blocks


def gather_by_block(model: nn.Module) -> list[str]:
    """Mark ``repeated_blocks(model)`` as ZeRO-3 leaves (call before ``deepspeed.initialize`` registers the
    hooks); returns the class names marked, for the log."""
    from deepspeed.utils import set_z3_leaf_module

    blocks = repeated_blocks(model)
    for block in blocks:
        set_z3_leaf_module(block, True)
        block.register_forward_pre_hook(_inputs_need_grad)
    return sorted({type(block).__name__ for block in blocks})


def _inputs_need_grad(block: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: when the block trains but none of its positional tensor inputs (the ones PyTorch's full
    backward hooks watch) requires grad, the first floating one is replaced by a copy that does (see the module
    docstring)."""
    if not torch.is_grad_enabled() or not any(p.requires_grad for p in block.parameters()):
        return None
    if any(isinstance(value, torch.Tensor) and value.requires_grad for value in args):
        return None
    for index, value in enumerate(args):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return (*args[:index], value.detach().requires_grad_(), *args[index + 1:])
    raise ValueError(f"{type(block).__name__} trains under ZeRO-3 gathered by block but takes no positional "
                     "floating-point tensor to carry the gradient DeepSpeed's hook waits for: set "
                     "train.zero3_gather_by_block=false")
