"""One MDS dataset written by several ranks: each rank writes its contiguous run of the records to a part folder
of its own, and rank 0 then writes the dataset's ``index.json`` over the parts, in rank order.

    <subset>/part00000/{index.json, shard.00000.mds, ...}     rank 0's records
    <subset>/part00001/...                                    rank 1's
    <subset>/index.json                                       every shard, named "part0000r/shard.*.mds"

This is the layout streaming's ``merge_index`` writes, so every MDS reader sees one dataset, in the order of the
records before the split; only where shards end depends on the number of ranks. One rank alone writes the dataset's
folder directly. Used by ``jala data convert`` and the corpus copies (``jala data tokenize``, ``jala token-predictor
label``) under torchrun.
"""
from __future__ import annotations

import json
from pathlib import Path


def part_folder(rank: int) -> str:
    return f"part{rank:05d}"


def share_folder(out_dir: Path, rank: int, world_size: int) -> Path:
    """Where a rank writes its share of the dataset at ``out_dir``: its part folder, or the dataset's own folder
    when it is the only rank (nothing to merge)."""
    return out_dir / part_folder(rank) if world_size > 1 else out_dir


def merge_parts(out_dir: Path, ranks: list[int]) -> None:
    """Write ``out_dir/index.json`` over the part folders of ``ranks`` (in that order); one clear error when a
    part is missing, which is what ranks writing to folders that are not one (no shared filesystem) look like."""
    indexes = [out_dir / part_folder(rank) / "index.json" for rank in ranks]
    missing = [str(index.parent) for index in indexes if not index.is_file()]
    if missing:
        raise FileNotFoundError(f"rank 0 cannot see {', '.join(missing)}: every rank must write --out on one "
                                "shared filesystem")
    shards = []
    for index in indexes:
        for shard in json.loads(index.read_text())["shards"]:
            for files in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
                if shard.get(files):
                    shard[files]["basename"] = f"{index.parent.name}/{shard[files]['basename']}"
            shards.append(shard)
    written = out_dir / "index.json.partial"
    written.write_text(json.dumps({"version": 2, "shards": shards}))
    written.replace(out_dir / "index.json")   # readers never see half an index
