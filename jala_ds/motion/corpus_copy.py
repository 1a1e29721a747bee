"""A copy of an MDS corpus with columns added or replaced, computed a block of records at a time.

What ``jala data tokenize`` (motion tokens from poses) and ``jala token-predictor label`` (tokens predicted for
video-only clips) share. Every subset of ``<src>`` (``lab``, ``wild`` and the held-out ``heldout/lab|wild``) is
written to the same folder under ``<out>`` with the source's shard settings (hashes, compression, size limit),
record for record in the same order:

    report = copy_corpus(src, out, TOKEN_COLUMNS, add_tokens, counted=("chunks",), block=64, desc="tokenize",
                         inputs={"tokenizer": content_sha256(checkpoint)}, ranks=ranks)
    # add_tokens(subset, records, tally) -> one dict of new or replaced columns per record, adding to tally["chunks"]
    # report: {"clips": ..., "chunks": ..., "subsets": {"lab": {"clips": ..., "chunks": ...}, ...}, "seconds": ...}

The copy is written in pieces of ``piece_clips`` records of a subset (``jala_ds.data.mds_pieces``): one that
stops part-way reruns with ``resume`` and copies only the pieces it had not finished. Under torchrun the ranks
share out the pieces and rank 0 merges each subset's index: the copy reads as the source did, record for record,
in the same shards for any number of ranks. ``<out>`` must be one folder that every rank writes to: a shared
filesystem when the ranks span nodes.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from jala_ds.data.convert import DATASETS
from jala_ds.data.corpus_provenance import converted_settings
from jala_ds.data.mds_pieces import (
    PIECE_CLIPS,
    PieceLedger,
    check_source_apart,
    content_sha256,
    merge_pieces,
    piece_folder,
    piece_runs,
)
from jala_ds.data.schema import SUBSETS
from jala_ds.motion.pose_corpus import open_mds
from jala_ds.torchrun_group import Ranks

Records = list[dict[str, Any]]


def corpus_subsets(src: Path) -> list[str]:
    """The subsets of a converted corpus, training ones first; one clear error when there are none."""
    subsets = [s for s in DATASETS if (src / s / "index.json").is_file()]
    if not any(s in SUBSETS for s in subsets):
        raise FileNotFoundError(f"no MDS subsets (lab/, wild/) under {src}: point --src at `jala data convert`'s "
                                "output")
    return subsets


def copy_corpus(src: str | Path, out: str | Path, columns: dict[str, str],
                transform: Callable[[str, Records, Counter], Records], *, counted: tuple[str, ...], block: int,
                desc: str, inputs: dict[str, Any], ranks: Ranks, piece_clips: int = PIECE_CLIPS,
                resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Write every subset of ``src`` to ``out`` with ``columns`` (name -> MDS encoding) added to its own;
    ``transform(subset, records, tally)`` gives each record's new or replaced column values and adds to the
    subset's ``tally`` under the ``counted`` keys; ``inputs`` names what else decides its output (a checkpoint's
    hash, settings), which a resumed copy must share. This rank copies its share of the pieces still to do.
    Returns the clips and tallies of the whole copy, per subset and in total, and the time and rate of this run
    (its slowest rank) on the clips it copied. Refuses an ``out`` where the copy would write over the source."""
    src, out = Path(src), Path(out)
    subsets = corpus_subsets(src)
    # Every dataset folder, not only the source's: a held-out split left by an earlier copy of another corpus
    # would otherwise survive --overwrite and be evaluated on as this corpus' own.
    check_source_apart(src, out, list(DATASETS))
    sources = {subset: open_mds(src / subset) for subset in subsets}
    runs = {f"{subset}/{piece_folder(k)}": (subset, run)
            for subset in subsets for k, run in enumerate(piece_runs(len(sources[subset]), piece_clips))}
    plan = {"build": desc, "source": {subset: content_sha256(src / subset / "index.json") for subset in subsets},
            "converted": converted_settings(src), "columns": columns, "piece_clips": piece_clips, "pieces": len(runs),
            **inputs}
    occupied = [out / folder for folder in DATASETS if (out / folder).exists()]
    ledger = PieceLedger(out, plan, ranks, occupied=occupied, resume=resume, overwrite=overwrite)
    mine = ledger.mine(list(runs))
    started = time.perf_counter()
    with tqdm(total=sum(len(runs[piece][1]) for piece in mine), desc=desc, unit="clip",
              disable=ranks.rank > 0) as progress:
        for piece in mine:
            subset, run = runs[piece]
            ledger.finish(piece, copy_piece(sources[subset], src / subset, out / piece, run, columns, transform,
                                            subset, counted=counted, block=block, progress=progress))
            rate = progress.n * ranks.world_size / (time.perf_counter() - started)   # rank 0's, for all
            progress.set_postfix(clips_per_s=f"{rate:.1f}")
    everyone = ranks.gather((time.perf_counter() - started, sum(len(runs[piece][1]) for piece in mine)))
    seconds, copied = max(took for took, _ in everyone), sum(clips for _, clips in everyone)
    tallies = dict(zip(runs, ledger.tallies(list(runs))))
    if ranks.rank == 0:
        for subset in subsets:
            merge_pieces(out / subset, [Path(piece).name for piece, (theirs, _) in runs.items() if theirs == subset])
    ranks.barrier()   # the merged indexes are there for every rank to read
    by_subset = {subset: sum((Counter(tallies[piece]) for piece, (theirs, _) in runs.items() if theirs == subset),
                             Counter({key: 0 for key in ("clips", *counted)}))
                 for subset in subsets}
    clips = sum(tally["clips"] for tally in by_subset.values())
    return {"clips": clips, **{key: sum(t[key] for t in by_subset.values()) for key in counted},
            "subsets": {subset: {key: t[key] for key in ("clips", *counted)} for subset, t in by_subset.items()},
            "copied_now": copied, "seconds": seconds, "clips_per_s": copied / seconds, "ranks": ranks.world_size}


def copy_piece(source: Any, source_dir: Path, out_dir: Path, run: range, columns: dict[str, str],
               transform: Callable[[str, Records, Counter], Records], subset: str, *, counted: tuple[str, ...],
               block: int, progress: tqdm) -> Counter:
    """Copy the records ``run`` of one subset to a piece folder, with the source's shard settings; return the
    piece's tally (``clips`` included)."""
    from streaming import MDSWriter

    settings = json.loads((source_dir / "index.json").read_text())["shards"][0]
    own = dict(zip(settings["column_names"], settings["column_encodings"]))
    tally = Counter({key: 0 for key in ("clips", *counted)})
    # exist_ok: the writer first deletes what a stopped attempt at this piece left
    with MDSWriter(out=str(out_dir), columns={**own, **columns}, compression=settings.get("compression"),
                   hashes=settings.get("hashes") or None, size_limit=settings.get("size_limit"),
                   exist_ok=True) as writer:
        for start in range(run.start, run.stop, block):
            records = [source[i] for i in range(start, min(start + block, run.stop))]
            for record, added in zip(records, transform(subset, records, tally)):
                writer.write({**{name: record[name] for name in own}, **added})
            tally["clips"] += len(records)
            progress.update(len(records))
    return tally
