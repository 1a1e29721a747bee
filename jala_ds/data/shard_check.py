"""Check a shard against the hash its index.json records, so that a corrupted file fails by name.

MosaicML streaming validates hashes only when it downloads a shard from a remote; a corpus read in place
(``remote=None``) is never checked. So the training loaders check each shard the first time the node touches it
(:class:`NodeShardChecks`): one sequential read of the file per node and job. Per process would not do: streaming
spreads every shard's samples over all local ranks and their loader workers, so each worker touches nearly every
shard, and a per-worker record would read the corpus once per rank and worker, every epoch (48 times an epoch on
a node of 8 ranks with 6 workers each).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np
from streaming import StreamingDataset
from streaming.base.format.base.reader import Reader
from streaming.base.hashing import get_hash
from streaming.base.shared import SharedArray
from streaming.base.shared.prefix import _get_path

PREFERRED_HASHES = ("xxh64", "sha1")
"""xxh64 first: it reads at memory speed, and the check is against corruption, not tampering."""


SHARD_CHECKS = "jala_shard_checks"
"""The node's record of claimed shards, a /dev/shm block named after its dataset's streaming prefix."""


class CorruptShardError(ValueError):
    """A shard's bytes do not match the hash in its dataset's index.json."""


def verify_shard(shard: Reader) -> None:
    """Raise :class:`CorruptShardError` naming the file if any file of ``shard`` fails its recorded hash."""
    for raw_info, _ in shard.file_pairs:
        path = os.path.join(shard.dirname, shard.split, raw_info.basename)
        algorithm = next((name for name in PREFERRED_HASHES if name in raw_info.hashes), None)
        if algorithm is None:
            raise CorruptShardError(f"shard {path} has no xxh64/sha1 hash in index.json: re-convert it with "
                                    "`jala data convert` (which records them), or set data.validate_hashes=false")
        with open(path, "rb") as file:
            actual = get_hash(algorithm, file.read())
        if actual != raw_info.hashes[algorithm]:
            raise CorruptShardError(f"shard {path} is corrupted: its {algorithm} is {actual}, index.json records "
                                    f"{raw_info.hashes[algorithm]}; restore the file or re-run `jala data convert`")


class NodeShardChecks:
    """Each shard of ``dataset`` hashed once per node: by the first loader worker, of any local rank, to touch it.

    The record is one byte per shard in shared memory under the dataset's streaming prefix, so jobs never share one,
    and a dead job's is removed with streaming's blocks (:mod:`jala_ds.data.orphaned_memory`). A worker claims a
    shard under a lock on the record's file and hashes it outside the lock: the node's other workers read on
    meanwhile, and a corrupted shard still stops the job, from the worker that claimed it.
    """

    def __init__(self, dataset: StreamingDataset) -> None:
        name = _get_path(dataset._shm_prefix_int, SHARD_CHECKS)
        self.claimed = SharedArray(dataset.num_shards, np.uint8, name)  # the first rank creates it zeroed
        # Opened now, while the block surely has its name: the rank that created it unlinks the name when it exits,
        # possibly before the other ranks are done. Forked loader workers inherit the file; its POSIX lock
        # (lockf) belongs to each process, so it keeps them apart as well as the ranks.
        self.record = open(Path("/dev/shm") / name, "rb+")  # closed with this object

    def check_once(self, shard_id: int, shard: Reader) -> None:
        """:func:`verify_shard` unless another process of the node has claimed ``shard_id``."""
        if not self.claimed[shard_id] and self._claim(shard_id):
            verify_shard(shard)

    def _claim(self, shard_id: int) -> bool:
        fcntl.lockf(self.record, fcntl.LOCK_EX)
        try:
            if self.claimed[shard_id]:
                return False
            self.claimed[shard_id] = 1
            return True
        finally:
            fcntl.lockf(self.record, fcntl.LOCK_UN)
