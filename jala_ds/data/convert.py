"""Raw clips -> MDS shards, one dataset per subset (``<out>/lab``, ``<out>/wild``), plus ``<out>/report.json``.

A ``data.heldout_fraction`` of the labelled clips (lab, and wild clips whose pseudo labels are trusted) goes to
``<out>/heldout/lab`` and ``<out>/heldout/wild`` instead, chosen by a hash of the clip id: the training streams
never see them, and ``jala eval motion`` scores generation on them.

    jala data convert --src demo_out/raw --out demo_out/mds --workers 2 --recipe tiny_cpu

Clips are read and checked in ``workers`` processes (decoding dominates) and written by this process in
manifest order, so the shards and their hashes are the same for any number of workers. The report always
balances: ``clips_in == written + rejected``; every rejection carries its reason and the clip it hit. A clip id
seen earlier in the manifest is rejected as a duplicate without being decoded.

The datasets are written in pieces of ``piece_clips`` manifest entries (``jala_ds.data.mds_pieces``): a conversion
that stops part-way (a crash, a pre-empted job) reruns with ``--resume`` and converts only the pieces it had not
finished; a job script can pass ``--resume`` always. Across nodes, under torchrun, the ranks share out the pieces,
each decoding with its own ``workers``, and rank 0 merges the indexes and the report. The records, shards and
report are those of a one-process conversion; ``--out`` must be on a filesystem every node shares:

    torchrun --nnodes 8 --nproc_per_node 1 ... $(which jala) data convert --src RAW --out MDS --workers 64 --resume
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streaming import MDSWriter
from tqdm import tqdm

from jala_ds.data.config import DataConfig
from jala_ds.data.mds_pieces import (
    PIECE_CLIPS,
    RANKS_WAIT,
    PieceLedger,
    check_source_apart,
    content_sha256,
    merge_pieces,
    piece_folder,
    piece_runs,
)
from jala_ds.data.raw_clips import ClipRejected, ConvertSettings, convert_one
from jala_ds.data.schema import MDS_COLUMNS, SHARD_HASHES, SUBSETS
from jala_ds.torchrun_group import torchrun_ranks

HELDOUT = "heldout"
"""Folder under the converter's output that holds the held-out datasets (``heldout/lab``, ``heldout/wild``)."""
DATASETS = (*SUBSETS, *(f"{HELDOUT}/{subset}" for subset in SUBSETS))
"""Every dataset a conversion may write, relative to its output folder."""
DEFAULT_SHARD_BYTES = 1 << 26
"""64 MiB shards: big enough for sequential reads, small enough that one rank's shards spread over many."""


def convert_corpus(src: str | Path, out: str | Path, data: DataConfig, *, workers: int = 1,
                   shard_bytes: int = DEFAULT_SHARD_BYTES, piece_clips: int = PIECE_CLIPS, overwrite: bool = False,
                   resume: bool = False) -> dict[str, Any]:
    """Convert the raw corpus at ``src`` into MDS datasets under ``out`` (this rank's share of the pieces under
    torchrun); return (and write) the report of the whole conversion."""
    src, out = Path(src), Path(out)
    manifest = src / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: --src must be a folder with manifest.jsonl "
                                "(docs/architecture.md section 1; `jala data synth` writes one)")
    if workers < 1:
        raise ValueError(f"--workers {workers}: use at least 1")
    check_source_apart(src, out, list(DATASETS))
    settings = ConvertSettings(chunk_frames=data.chunk_frames, wild_slowdown=data.wild_slowdown,
                               min_pseudo_confidence=data.min_pseudo_confidence, frame_size=data.frame_size)
    entries = read_manifest(manifest)
    if not entries:
        raise ValueError(f"{manifest} holds no clip: write one JSON object per line (docs/architecture.md section 1)")
    runs = {piece_folder(k): run for k, run in enumerate(piece_runs(len(entries), piece_clips))}
    plan = {"build": "convert", "manifest_sha256": content_sha256(manifest), "piece_clips": piece_clips,
            "pieces": len(runs), "settings": dataclasses.asdict(settings), "heldout_fraction": data.heldout_fraction,
            "shard_bytes": shard_bytes}
    with torchrun_ranks(RANKS_WAIT) as ranks:
        occupied = [out / folder for folder in DATASETS if (out / folder).exists() and any((out / folder).iterdir())]
        ledger = PieceLedger(out, plan, ranks, occupied=occupied, resume=resume, overwrite=overwrite)
        convert_pieces(src, out, entries, {piece: runs[piece] for piece in ledger.mine(list(runs))}, settings,
                       data.heldout_fraction, workers, shard_bytes, ledger)
        ranks.barrier()   # every piece is done
        if ranks.rank == 0:
            tallies = ledger.tallies(list(runs))
            report = {"clips_in": len(entries), **combined(tallies), "heldout_fraction": data.heldout_fraction,
                      "settings": dataclasses.asdict(settings), "src": str(src)}
            for folder in DATASETS:
                pieces = [piece for piece, tally in zip(runs, tallies) if folder in tally["folders"]]
                if pieces:
                    merge_pieces(out / folder, pieces)
            if report["clips_in"] != report["written"] + report["rejected"]:
                raise RuntimeError(f"conversion lost clips: {report['clips_in']} in, {report['written']} written, "
                                   f"{report['rejected']} rejected")
            (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        ranks.barrier()   # the report is there for every rank to return
    return json.loads((out / "report.json").read_text())


def convert_pieces(src: Path, out: Path, entries: list[tuple[str, Any]], runs: dict[str, range],
                   settings: ConvertSettings, heldout_fraction: float, workers: int, shard_bytes: int,
                   ledger: PieceLedger) -> None:
    """Convert the pieces ``runs`` (name -> run of entries) one after the other, each marked done in ``ledger`` once
    written; one pool of ``workers`` decodes all of them."""
    earlier = first_lines(entries)
    fresh = [i for run in runs.values() for i in run if earlier[entries[i][0]] == i]
    converted = convert_all(src, fresh, entries, settings, workers)
    ranks = ledger.ranks
    with tqdm(total=sum(len(run) for run in runs.values()), unit="clip", disable=ranks.rank > 0,
              desc="convert" if ranks.world_size == 1 else f"convert (rank 0 of {ranks.world_size})") as progress:
        for piece, run in runs.items():
            ledger.finish(piece, convert_piece(out, piece, entries, run, earlier, converted, heldout_fraction,
                                               shard_bytes, progress))
    converted.close()


def convert_piece(out: Path, piece: str, entries: list[tuple[str, Any]], run: range, earlier: dict[str, int],
                  converted: Iterator[tuple[int, tuple[dict, bool] | ClipRejected]], heldout_fraction: float,
                  shard_bytes: int, progress: tqdm) -> dict[str, Any]:
    """Write ``entries[run]`` (their outcomes drawn from ``converted`` in order) to the piece's folder of each
    dataset; return the piece's counts, its rejections in manifest order and the datasets it wrote to."""
    for folder in DATASETS:
        shutil.rmtree(out / folder / piece, ignore_errors=True)   # what a stopped attempt at this piece left
    tally = {"written": 0, "rejected": 0, "written_by_subset": Counter(), "heldout_by_subset": Counter(),
             "rejected_by_reason": Counter(), "pseudo_labels_dropped": 0, "rejections": []}
    writers: dict[str, MDSWriter] = {}
    for i in run:
        progress.update()
        clip_id = entries[i][0]
        if earlier[clip_id] == i:
            _, outcome = next(converted)
        else:
            outcome = ClipRejected("duplicate_clip_id", f"{clip_id} appears earlier in the manifest, at entry "
                                                        f"{earlier[clip_id] + 1}")
        if isinstance(outcome, ClipRejected):
            tally["rejected"] += 1
            tally["rejected_by_reason"][outcome.reason] += 1
            tally["rejections"].append({"clip_id": clip_id, "reason": outcome.reason, "detail": outcome.detail})
            continue
        record, pseudo_dropped = outcome
        subset = record["subset"]
        heldout = bool(record["labeled"]) and is_heldout(clip_id, heldout_fraction)
        folder = f"{HELDOUT}/{subset}" if heldout else subset
        if folder not in writers:
            writers[folder] = MDSWriter(out=str(out / folder / piece), columns=MDS_COLUMNS, compression=None,
                                        hashes=SHARD_HASHES, size_limit=shard_bytes)
        writers[folder].write(record)
        tally["written"] += 1
        tally["written_by_subset"][subset] += 1
        tally["heldout_by_subset"][subset] += int(heldout)
        tally["pseudo_labels_dropped"] += int(pseudo_dropped)
    for writer in writers.values():
        writer.finish()
    return {**tally, "folders": sorted(writers)}


def combined(shares: list[dict[str, Any]]) -> dict[str, Any]:
    """The pieces' counts added up and their rejections one after the other (the manifest's order)."""
    report: dict[str, Any] = {}
    for key in ("written", "rejected", "pseudo_labels_dropped"):
        report[key] = sum(share[key] for share in shares)
    for key in ("written_by_subset", "heldout_by_subset", "rejected_by_reason"):
        report[key] = dict(sum((Counter(share[key]) for share in shares), Counter()))
    report["rejections"] = [rejection for share in shares for rejection in share["rejections"]]
    return report


def first_lines(entries: list[tuple[str, Any]]) -> dict[str, int]:
    """Each clip id's first entry: later ones are duplicates."""
    first: dict[str, int] = {}
    for i, (clip_id, _) in enumerate(entries):
        first.setdefault(clip_id, i)
    return first


def is_heldout(clip_id: str, fraction: float) -> bool:
    """Whether ``clip_id`` belongs to the held-out share ``fraction``: a hash of the id alone (not Python's
    salted ``hash``), so the split is the same on every run, machine and worker count."""
    digest = hashlib.sha256(clip_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2 ** 64


def read_manifest(manifest: Path) -> list[tuple[str, Any]]:
    """``(clip id, entry)`` per non-blank line; a line that is not UTF-8 JSON becomes an entry the checks reject.

    Lines end at ``\n`` alone: ``str.splitlines`` also cuts at U+2028, U+0085 and other characters that JSON
    written with ``ensure_ascii=False`` leaves raw inside an instruction."""
    entries = []
    for number, line in enumerate(manifest.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)   # bytes: decoded as UTF-8 (a BOM too), whatever the locale
        except ValueError as err:   # JSONDecodeError, or UnicodeDecodeError
            entry = f"line {number} is not UTF-8 JSON ({err})"
        clip_id = entry.get("clip_id") if isinstance(entry, dict) else None
        usable = isinstance(clip_id, str) and clip_id.strip()   # the checks reject any other
        entries.append((clip_id if usable else f"{manifest.name}:{number}", entry))
    return entries


def convert_all(src: Path, indices: list[int], entries: list[tuple[str, Any]], settings: ConvertSettings,
                workers: int) -> Iterator[tuple[int, tuple[dict, bool] | ClipRejected]]:
    """``(entry index, record or rejection)`` of each of ``indices``, in that order."""
    tasks = [(src, entries[i][1], settings) for i in indices]
    if workers == 1:
        yield from zip(indices, map(convert_one, tasks))
        return
    # spawn: the parent may hold threads (torch, tokenizers) that a forked child must not inherit;
    # convert_one lives in raw_clips, whose imports (numpy, av, PIL) keep a spawned worker's start-up short.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from zip(indices, pool.imap(convert_one, tasks, chunksize=4))
