"""Removing the shared memory that dead streaming jobs left in /dev/shm, and nothing that a live job uses.

Each ``StreamingDataset`` keeps its loaders' coordination in /dev/shm blocks named ``<prefix>_<name>``
(``000007_shard_states``, ...). A job killed together with its resource tracker (OOM killer, ``scancel``, a
node's process group killed) leaves them behind, RAM-backed, until the machine reboots. They never confuse a
later job: with local shards (no ``remote``) streaming moves on to the next free prefix.

streaming's ``clean_stale_shared_memory`` is not fit for this. It walks the prefixes up from 0 and unlinks every
block it finds, a live job's as well: a job starting on a node where another one runs (two experiments on one
8-GPU node, two test workers) pulled the blocks from under the other's loaders, whose ranks then failed to
attach at their next epoch or while registering. Here a block is removed only when no process holds it: none
has it open (``/proc/<pid>/fd``) and none has it mapped (``/proc/<pid>/maps``). Streaming holds each block open
from the moment it creates it until it unlinks it, so a live job's blocks are always held. Blocks are compared by
device and inode, not name, so that a block of the same name in another mount namespace (a container's own
/dev/shm) does not count as holding one here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from streaming.base.constant import SHM_TO_CLEAN

from jala_ds.data.shard_check import SHARD_CHECKS

SHARED_MEMORY = Path("/dev/shm")
PROC = Path("/proc")
STREAMING_BLOCK = re.compile(rf"\d{{6}}_({'|'.join([*SHM_TO_CLEAN, SHARD_CHECKS])})")

Identity = tuple[int, int, int]
"""(major, minor, inode) of a file: what /proc/<pid>/maps records of a mapping."""


def identity(stat: os.stat_result) -> Identity:
    return os.major(stat.st_dev), os.minor(stat.st_dev), stat.st_ino


def held_shared_memory() -> set[Identity]:
    """Every /dev/shm file some process this user may inspect has open or mapped, in any mount namespace."""
    held: set[Identity] = set()
    for pid in (entry for entry in PROC.iterdir() if entry.name.isdigit()):
        held |= open_shared_memory(pid) | mapped_shared_memory(pid)
    return held


def open_shared_memory(pid: Path) -> set[Identity]:
    found = set()
    try:
        descriptors = list((pid / "fd").iterdir())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return found  # the process is gone, or belongs to another user, whose blocks we cannot unlink anyway
    for fd in descriptors:
        try:
            if os.readlink(fd).startswith("/dev/shm/"):
                found.add(identity(fd.stat()))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # closed since it was listed (the listing's own descriptor among them)
    return found


def mapped_shared_memory(pid: Path) -> set[Identity]:
    try:
        lines = (pid / "maps").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return set()
    found = set()
    for line in lines:  # "<range> <perms> <offset> <major>:<minor> <inode>  <path>", device numbers in hex
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
            major, minor = (int(part, 16) for part in fields[3].split(":"))
            found.add((major, minor, int(fields[4])))
    return found


def remove_orphaned_streaming_memory(root: Path = SHARED_MEMORY) -> list[str]:
    """Unlink the streaming blocks under ``root`` that no process holds; returns their names. Safe to call while
    other jobs run, from any number of processes; a job calls it once per node, before its loaders exist."""
    blocks = {path: file_identity(path) for path in root.iterdir() if STREAMING_BLOCK.fullmatch(path.name)}
    held = held_shared_memory()  # listed after the blocks: a block created since is not a candidate
    removed = []
    for path, block in sorted(blocks.items()):
        # Still the same file: another cleaner may have removed it and a new job made one of the same name.
        if block is not None and block not in held and file_identity(path) == block:
            try:
                path.unlink()
                removed.append(path.name)
            except (FileNotFoundError, PermissionError):
                continue  # another process removed it first, or another user owns it
    return removed


def file_identity(path: Path) -> Identity | None:
    """``path``'s identity, None once it is gone."""
    try:
        return identity(path.stat())
    except FileNotFoundError:
        return None
