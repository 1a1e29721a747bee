"""``init_distributed`` on the CPU accelerator: DeepSpeed's process group starts without its shared-memory
all-reduce op (a gcc build on first use, and a 69 MB /dev/shm file per rank), and training still reduces across
ranks through torch.distributed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from jala_jobs import leftover_allreduce_buffers

from jala_ds.train.engine import free_port

# A fresh interpreter, so that no earlier test's process group or DeepSpeed backend is already in place.
SCRIPT = """
import json, os
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT={port!r},
                  LOCAL_SIZE="1")
import deepspeed.comm.comm as ds_comm
import torch
import torch.distributed as dist
from jala_ds.train.engine import init_distributed

init_distributed()
total = torch.tensor([2.0])
dist.all_reduce(total)
print(json.dumps({{"shm_op": ds_comm.cdb.shm_comm_op is not None, "backend": dist.get_backend(),
                  "sum": total.item()}}))
dist.destroy_process_group()
"""


def test_the_process_group_starts_without_deepspeeds_shared_memory_op():
    port = free_port()
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(port=str(port))], env=env, capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"shm_op": False, "backend": "gloo", "sum": 2.0}
    assert "deepspeed_shm_comm" not in done.stdout + done.stderr  # nothing was built or loaded
    assert not leftover_allreduce_buffers(port)
