"""Check a shard against the hash its index.json records, so that a corrupted file fails by name.

MosaicML streaming validates hashes only when it downloads a shard from a remote; a corpus read in place
(``remote=None``) is never checked. The loader therefore calls :func:`verify_shard` the first time each
process touches a shard: one sequential read of the file, cheap next to decoding its samples.
"""
from __future__ import annotations

import os

from streaming.base.format.base.reader import Reader
from streaming.base.hashing import get_hash

PREFERRED_HASHES = ("xxh64", "sha1")
"""xxh64 first: it reads at memory speed, and the check is against corruption, not tampering."""


class CorruptShardError(RuntimeError):
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
