"""Start ``jala`` commands in subprocesses as a user would: bare, or 2 ranks under the deepspeed launcher or
torchrun, each job with its MLflow store in its own folder.

The end-to-end tests use the deepspeed launcher where it is the subject (a reference run, a killed run, the
post-training that ships) and torchrun for the runs they compare against it: the launcher must not change the
weights, and torchrun starts and stops ~7 s faster (the deepspeed launcher is two more Python processes that
each import DeepSpeed, one after the other).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
JALA = str(BIN / "jala")


def job_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", PATH=f"{BIN}:{env['PATH']}")
    return env


def deepspeed_launcher(port: int) -> list[str]:
    return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(port)]


def torchrun(port: int) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port)]


def start(cmd: list[str], tmp_path: Path) -> subprocess.Popen:
    """``cmd`` running in ``tmp_path``, its stderr merged into its stdout."""
    return subprocess.Popen(cmd, cwd=tmp_path, env=job_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    """Wait for a started job; it must succeed. Returns its output."""
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]
    return output


def run(cmd: list[str], tmp_path: Path) -> str:
    return finish(start(cmd, tmp_path))


def leftover_allreduce_buffers(port: int) -> list[str]:
    """DeepSpeed's CPU all-reduce files of a job on ``port`` in /dev/shm: none, as ``engine.init_distributed`` keeps
    DeepSpeed from building the op that maps them (``skip_cpu_inference_allreduce``)."""
    return [path.name for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*")]
