"""A census of the operators that make the host wait for the device, with where each was called from.

On a GPU each of these copies a value to the host, or sizes an output by one (``nonzero``), so the host stops
queuing work until every kernel queued before it has run. Counted on CPU tensors, where nothing waits, the
operators are the same ones a GPU run dispatches: a CPU test can keep a GPU's forward free of them.
"""
from __future__ import annotations

import collections
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING = {
    "_local_scalar_dense",  # .item(), int(), float(), bool() of a tensor
    "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",  # output sized by the values
    "bincount",  # sized by the largest value on CUDA
    "equal", "is_nonzero",  # a Python bool
    "chunk_bounds",  # jala_kernels: checks the layout on the host; given the batch's bounds, never called
}
BOOL_INDEXED = {"index", "index_put", "index_put_"}
"""Indexing with a bool mask finds the mask's nonzero positions first."""


class HostSyncCensus(TorchDispatchMode):
    """Counts syncing operator calls by (operator, the innermost project frames that called it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING or (name in BOOL_INDEXED and _has_bool_index(args[1])):
            self.calls[(name, _call_site())] += 1
        return func(*args, **(kwargs or {}))


def _has_bool_index(indices) -> bool:
    return any(isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in indices or ())


def _call_site() -> str:
    frames = [frame for frame in traceback.extract_stack()[:-2]
              if "/jala_ds/" in frame.filename or "/kernels/" in frame.filename]
    return " <- ".join(f"{Path(frame.filename).name}:{frame.lineno}" for frame in reversed(frames[-3:]))
