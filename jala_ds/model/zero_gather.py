"""In-place edits of parameters that may be ZeRO-3 partitioned (built under ``deepspeed.zero.Init``)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch


def gathered_for_edit(params: Iterable[torch.nn.Parameter]) -> contextlib.AbstractContextManager:
    """Full tensors of ``params`` inside the block; rank 0's edits are scattered back to every shard on exit.

    A no-op for ordinary parameters, so builders call it unconditionally and work the same with or without ZeRO-3.
    """
    params = list(params)
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed  # only a partitioned model needs it

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
