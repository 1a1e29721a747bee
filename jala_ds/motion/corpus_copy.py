"""A copy of an MDS corpus with columns added or replaced, computed a block of records at a time.

What ``jala data tokenize`` (motion tokens from poses) and ``jala token-predictor label`` (tokens predicted for
video-only clips) share. Every subset of ``<src>`` (``lab``, ``wild`` and the held-out ``heldout/lab|wild``) is
written to the same folder under ``<out>`` with the source's shard settings (hashes, compression, size limit),
record for record in the same order:

    report = copy_corpus(src, out, TOKEN_COLUMNS, add_tokens, counted=("chunks",), block=64, desc="tokenize")
    # add_tokens(subset, records, tally) -> one dict of new or replaced columns per record, adding to tally["chunks"]
    # report: {"clips": ..., "chunks": ..., "subsets": {"lab": {"clips": ..., "chunks": ...}, ...}, "seconds": ...}

Under torchrun the ranks split every subset into contiguous runs of records, one each in rank order, and write
them as the parts of one dataset (``jala_ds.data.mds_parts``): the copy reads as the source did, record for
record, for any number of ranks. ``<out>`` must be one folder that every rank writes to: a shared filesystem
when the ranks span nodes.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from jala_ds.data.convert import HELDOUT
from jala_ds.data.mds_parts import merge_parts, share_folder
from jala_ds.data.schema import SUBSETS
from jala_ds.motion.pose_corpus import open_mds
from jala_ds.torchrun_group import Ranks

Records = list[dict[str, Any]]


def corpus_subsets(src: Path) -> list[str]:
    """The subsets of a converted corpus, training ones first; one clear error when there are none."""
    folders = [*SUBSETS, *(f"{HELDOUT}/{subset}" for subset in SUBSETS)]
    subsets = [s for s in folders if (src / s / "index.json").is_file()]
    if not any(s in SUBSETS for s in subsets):
        raise FileNotFoundError(f"no MDS subsets (lab/, wild/) under {src}: point --src at `jala data convert`'s "
                                "output")
    return subsets


def copy_corpus(src: str | Path, out: str | Path, columns: dict[str, str],
                transform: Callable[[str, Records, Counter], Records], *, counted: tuple[str, ...], block: int,
                desc: str, ranks: Ranks) -> dict[str, Any]:
    """Write every subset of ``src`` to ``out`` with ``columns`` (name -> MDS encoding) added to its own;
    ``transform(subset, records, tally)`` gives each record's new or replaced column values and adds to the
    subset's ``tally`` under the ``counted`` keys. This rank copies its share of each subset (module docstring).
    Returns the clips and tallies of all ranks, per subset and in total, and the time the slowest rank took.
    Refuses to write over the source or over a subset already in ``out``."""
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise ValueError(f"--out {out} is the source corpus: write the copy to another folder")
    subsets = corpus_subsets(src)
    taken = [s for s in subsets if (out / s).exists()]
    if taken:
        raise FileExistsError(f"{out} already holds {', '.join(taken)}: choose a new --out folder or delete it")
    ranks.barrier()   # every rank has looked at <out> before any writes to it
    started = time.perf_counter()
    tallies = {subset: copy_share(src / subset, out / subset, columns, transform, subset, counted=counted,
                                  block=block, desc=desc, ranks=ranks)
               for subset in subsets}
    everyone = ranks.gather((time.perf_counter() - started, tallies))   # returns once every part is written
    seconds = max(took for took, _ in everyone)
    tallies = {subset: sum((theirs[subset] for _, theirs in everyone), Counter()) for subset in subsets}
    if ranks.rank == 0 and ranks.world_size > 1:
        for subset in subsets:
            merge_parts(out / subset, list(range(ranks.world_size)))
    ranks.barrier()   # the merged indexes are there for every rank to read
    clips = sum(tally["clips"] for tally in tallies.values())
    return {"clips": clips, **{key: sum(t[key] for t in tallies.values()) for key in counted},
            "subsets": {subset: {key: t[key] for key in ("clips", *counted)} for subset, t in tallies.items()},
            "seconds": seconds, "clips_per_s": clips / seconds, "ranks": ranks.world_size}


def copy_share(source_dir: Path, out_dir: Path, columns: dict[str, str],
               transform: Callable[[str, Records, Counter], Records], subset: str, *, counted: tuple[str, ...],
               block: int, desc: str, ranks: Ranks) -> Counter:
    """Copy this rank's run of records of one subset to its share's folder; return its tally (``clips``
    included)."""
    from streaming import MDSWriter

    source = open_mds(source_dir)
    settings = json.loads((source_dir / "index.json").read_text())["shards"][0]
    own = dict(zip(settings["column_names"], settings["column_encodings"]))
    first, end = (len(source) * r // ranks.world_size for r in (ranks.rank, ranks.rank + 1))
    tally = Counter({key: 0 for key in ("clips", *counted)})
    started = time.perf_counter()
    with MDSWriter(out=str(share_folder(out_dir, ranks.rank, ranks.world_size)), columns={**own, **columns},
                   compression=settings.get("compression"), hashes=settings.get("hashes") or None,
                   size_limit=settings.get("size_limit")) as writer, \
            tqdm(total=end - first, desc=f"{desc} {subset}", unit="clip", disable=ranks.rank > 0) as progress:
        for start in range(first, end, block):
            records = [source[i] for i in range(start, min(start + block, end))]
            for record, added in zip(records, transform(subset, records, tally)):
                writer.write({**{name: record[name] for name in own}, **added})
            tally["clips"] += len(records)
            progress.update(len(records))
            rate = tally["clips"] * ranks.world_size / (time.perf_counter() - started)   # rank 0's, for all
            progress.set_postfix(clips_per_s=f"{rate:.1f}")
    return tally
