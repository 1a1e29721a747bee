"""Run a script as 2 ranks of one node in separate processes (gloo), as torchrun or the deepspeed launcher would."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def run_two_ranks(script: str, args: list[str], out_dir: Path) -> list[dict]:
    """Each rank runs ``python -c script *args out_dir`` and writes ``out_dir/rank{r}.json``; returns both files."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", script, *args, str(out_dir)], env=env))
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    return [json.loads(Path(out_dir / f"rank{r}.json").read_text()) for r in range(2)]
