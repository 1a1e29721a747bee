"""Before loading anything, the ranks compare the checkpoint each found to resume from: a ``train.out_dir`` that
is node-local (scratch) rather than shared would have node 0 load step N while the others start afresh, and
train on a mix of both. Two ranks (gloo) that disagree both stop, each naming what every rank found."""
from __future__ import annotations

from two_ranks import run_two_ranks

SCRIPT = """
import json, sys
from pathlib import Path
import torch.distributed as dist
from jala_ds.train.resume_agreement import check_same_resume_target

checkpoint, out = Path(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()
check_same_resume_target(checkpoint)  # the same on both ranks: passes
try:
    check_same_resume_target(checkpoint if rank == 0 else None)
    error = None
except RuntimeError as refused:
    error = str(refused)
(out / f"rank{rank}.json").write_text(json.dumps({"error": error}))
"""


def test_ranks_that_found_different_checkpoints_all_stop_and_say_what_each_found(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000008"
    results = run_two_ranks(SCRIPT, [str(checkpoint)], tmp_path)
    for result in results:
        assert result["error"] == (f"the ranks disagree on the checkpoint to resume from (rank 0: {checkpoint}, "
                                   "rank 1: nothing): train.out_dir must be one folder every node sees at the "
                                   "same path")
