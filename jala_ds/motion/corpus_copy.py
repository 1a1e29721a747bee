"""A copy of an MDS corpus with columns added or replaced, computed a block of records at a time.

What ``jala data tokenize`` (motion tokens from poses) and ``jala token-predictor label`` (tokens predicted for
video-only clips) share. Every subset of ``<src>`` (``lab``, ``wild`` and the held-out ``heldout/lab|wild``) is
written to the same folder under ``<out>`` with the source's shard settings (hashes, compression, size limit),
record for record in the same order:

    report = copy_corpus(src, out, TOKEN_COLUMNS, add_tokens, counted=("chunks",), block=64, desc="tokenize")
    # add_tokens(subset, records, tally) -> one dict of new or replaced columns per record, adding to tally["chunks"]
    # report: {"clips": ..., "chunks": ..., "subsets": {"lab": {"clips": ..., "chunks": ...}, ...}, "seconds": ...}
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
from jala_ds.data.schema import SUBSETS
from jala_ds.motion.pose_corpus import open_mds

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
                desc: str) -> dict[str, Any]:
    """Write every subset of ``src`` to ``out`` with ``columns`` (name -> MDS encoding) added to its own;
    ``transform(subset, records, tally)`` gives each record's new or replaced column values and adds to the
    subset's ``tally`` under the ``counted`` keys. Returns the clips and tallies, per subset and in total, and the
    time taken. Refuses to write over the source or over a subset already in ``out``."""
    from streaming import MDSWriter

    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise ValueError(f"--out {out} is the source corpus: write the copy to another folder")
    subsets = corpus_subsets(src)
    taken = [s for s in subsets if (out / s).exists()]
    if taken:
        raise FileExistsError(f"{out} already holds {', '.join(taken)}: choose a new --out folder or delete it")
    tallies: dict[str, Counter] = {}
    started, done = time.perf_counter(), 0
    for subset in subsets:
        source = open_mds(src / subset)
        settings = json.loads((src / subset / "index.json").read_text())["shards"][0]
        own = dict(zip(settings["column_names"], settings["column_encodings"]))
        tally = tallies[subset] = Counter({key: 0 for key in counted})
        with MDSWriter(out=str(out / subset), columns={**own, **columns}, compression=settings.get("compression"),
                       hashes=settings.get("hashes") or None, size_limit=settings.get("size_limit")) as writer, \
                tqdm(total=len(source), desc=f"{desc} {subset}", unit="clip") as progress:
            for start in range(0, len(source), block):
                records = [source[i] for i in range(start, min(start + block, len(source)))]
                for record, added in zip(records, transform(subset, records, tally)):
                    writer.write({**{name: record[name] for name in own}, **added})
                done += len(records)
                progress.update(len(records))
                progress.set_postfix(clips_per_s=f"{done / (time.perf_counter() - started):.1f}")
        tally["clips"] = len(source)
    seconds = time.perf_counter() - started
    return {"clips": done, **{key: sum(t[key] for t in tallies.values()) for key in counted},
            "subsets": {subset: dict(t) for subset, t in tallies.items()}, "seconds": seconds,
            "clips_per_s": done / seconds}
