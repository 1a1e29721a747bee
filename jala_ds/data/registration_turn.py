"""One job at a time per node registers its streaming datasets' shared memory.

A ``StreamingDataset`` names its /dev/shm blocks with the first free prefix: every rank of the node scans for it,
then local rank 0 creates the prefix's ``locals`` block and the others attach to it (``get_shm_prefix``). Nothing
stops a second job on the node from doing the same in between (mosaicml/streaming#884, #901): its leader's create
then fails (``FileExistsError: '/000007_locals'``), or, worse, a rank that scanned before the other job's create
and a leader that scanned after it pick different prefixes, and a rank of a job reading the same corpus attaches
to the other job's blocks without an error. Two experiments on one 8-GPU node, a SLURM job array, two test
workers: all start loaders at the same moment.

So jala jobs take turns. The local leader takes an exclusive lock on a file in /dev/shm (the blocks' own
namespace, so nodes with their own /dev/shm never wait for each other), then a barrier holds every rank of the
job until it has: no rank scans before its leader has the node's turn. The leader lets go once its dataset exists.

Two multi-node jobs sharing two nodes could each hold one node's turn and wait at their barriers for the rank
blocked on the other: so a leader waits at most ``TURN_WAIT`` for the turn, then goes on without it, as streaming
alone would, and says so.
"""
from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

TURN_FILE = Path("/dev/shm/jala_streaming_registration.lock")
TURN_WAIT = 120.0
"""Seconds a local leader waits for the node's turn; a dataset's registration takes well under one."""
POLL = 0.05

log = logging.getLogger(__name__)


@contextmanager
def registration_turn(wait: float = TURN_WAIT) -> Iterator[None]:
    """Build a ``StreamingDataset`` inside this, on every rank of the job; the local leader is ``LOCAL_RANK`` 0."""
    turn = open_turn_file() if os.environ.get("LOCAL_RANK", "0") == "0" else None
    try:
        if turn is not None:
            take_turn(turn, wait)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        yield
    finally:
        if turn is not None:
            os.close(turn)  # releases the lock


def open_turn_file() -> int | None:
    """The lock's file, read-only (enough for flock): opened without O_CREAT when it exists, since the kernel refuses
    O_CREAT on another user's file in the sticky /dev/shm (fs.protected_regular). None if this user may not read it."""
    try:
        return os.open(TURN_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return os.open(TURN_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
    except PermissionError:
        log.warning("cannot read %s (another user's, mode %o): registering streaming's shared memory without the "
                    "node's turn", TURN_FILE, TURN_FILE.stat().st_mode & 0o777)
        return None


def take_turn(turn: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(turn, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                log.warning("another job has held %s for %.0f s: registering streaming's shared memory without the "
                            "node's turn", TURN_FILE, wait)
                return
            time.sleep(POLL)
