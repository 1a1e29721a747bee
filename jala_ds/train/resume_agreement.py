"""The ranks agree on the checkpoint to resume from before any of them loads it.

Each rank finds it on its own, in preflight, before a process group exists. A ``train.out_dir`` that is not one
folder every node shares (node-local scratch) would have some ranks load step N and others start afresh, and
train on a mix of both: under ZeRO-2 silently.
"""
from __future__ import annotations

from pathlib import Path

import torch.distributed as dist


def check_same_resume_target(resume_from: Path | None) -> None:
    """Collective: every rank found the same checkpoint to resume from, or none; else every rank stops, naming
    what each found."""
    found: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(found, None if resume_from is None else str(resume_from.resolve()))
    if len(set(found)) > 1:
        where = ", ".join(f"rank {rank}: {target or 'nothing'}" for rank, target in enumerate(found))
        raise RuntimeError(f"the ranks disagree on the checkpoint to resume from ({where}): train.out_dir must be "
                           "one folder every node sees at the same path")
