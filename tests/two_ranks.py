"""Run a script as 2 ranks of one node in separate processes (gloo), as torchrun or the deepspeed launcher would.

As torchrun's agent does, this process hosts the ranks' rendezvous store and keeps it until they end: a port
probed free and handed on could be taken before rank 0 binds it. Each rank's output goes to a log file, and a
failure reports each rank's exit status and the end of its log, not the interleaved warnings of both.
"""
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from torch.distributed import TCPStore

TIMEOUT_S = 300
GRACE_S = 30  # how long the other rank may take to finish once one has failed
LOG_LINES = 40


def run_two_ranks(script: str, args: list[str], out_dir: Path) -> list[dict]:
    """Each rank runs ``python -c script *args out_dir`` and writes ``out_dir/rank{r}.json``; returns both files."""
    store = TCPStore("127.0.0.1", 0, world_size=None, is_master=True, timeout=timedelta(seconds=TIMEOUT_S),
                     wait_for_workers=False)
    logs = [out_dir / f"rank{rank}.log" for rank in range(2)]
    procs = []
    for rank, log in enumerate(logs):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}
        with log.open("w") as sink:
            procs.append(subprocess.Popen([sys.executable, "-c", script, *args, str(out_dir)], env=env,
                                          stdout=sink, stderr=subprocess.STDOUT))
    codes = wait_all(procs)
    del store
    assert codes == [0, 0], "\n".join(f"rank {rank} exited with {code}; its log ends:\n{log_tail(log)}"
                                      for rank, (code, log) in enumerate(zip(codes, logs)) if code != 0)
    return [json.loads(Path(out_dir / f"rank{r}.json").read_text()) for r in range(2)]


def wait_all(procs: list[subprocess.Popen]) -> list[int]:
    """Exit codes (minus the signal's number for a rank a signal ended); a rank still running at the time limit,
    or ``GRACE_S`` after another failed, is killed (-9)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
            deadline = min(deadline, time.monotonic() + GRACE_S)
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    return [p.returncode for p in procs]


def log_tail(log: Path) -> str:
    """The last lines of a rank's log, less the deprecation warnings DeepSpeed's collectives print at every call."""
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if "FutureWarning" not in line and line.strip() != "return func(*args, **kwargs)"]
    return "\n".join(lines[-LOG_LINES:])
