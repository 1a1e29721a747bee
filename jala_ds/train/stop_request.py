"""A request from outside to save and stop: a file whose existence every rank agrees on at a log step.

SLURM warns a job before its time limit or a pre-emption (``launch/slurm.sbatch``: ``--signal=B:USR1@600``). The
warning reaches the batch script, not the ranks, so the script touches this file; the loop, at its next log
step, saves a checkpoint and returns, and the script requeues the job, whose ``train.resume=auto`` continues
from that checkpoint. By hand, the same from any launcher:

    touch runs/jala-internvl3-2b/STOP      # <train.out_dir>/STOP, or the path in $JALA_STOP_FILE

Only log steps look: they already wait for the device (the logged losses), so the all-reduce that makes the
ranks agree adds no wait of its own. At the recipe's ``log_every`` of 10 a request is seen within ~7 s.
"""
from __future__ import annotations

import os
from pathlib import Path

STOP_FILE_ENV = "JALA_STOP_FILE"


def stop_file(out_dir: str | Path) -> Path:
    """Where a request to stop the run in ``out_dir`` appears."""
    return Path(os.environ.get(STOP_FILE_ENV) or Path(out_dir) / "STOP")


def stop_requested(path: Path, device) -> bool:
    """Collective: whether any rank sees ``path`` (a shared filesystem may show it to some ranks first)."""
    # torch only here: preflight reads stop_file before torch is imported
    import torch
    import torch.distributed as dist

    seen = torch.tensor([float(path.exists())], device=device)
    dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    return bool(seen.item())
