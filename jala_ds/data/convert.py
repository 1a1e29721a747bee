"""Raw clips -> MDS shards, one dataset per subset (``<out>/lab``, ``<out>/wild``), plus ``<out>/report.json``.

A ``data.heldout_fraction`` of the labelled clips (lab, and wild clips whose pseudo labels are trusted) goes to
``<out>/heldout/lab`` and ``<out>/heldout/wild`` instead, chosen by a hash of the clip id: the training streams
never see them, and ``jala eval motion`` scores generation on them.

    jala data convert --src demo_out/raw --out demo_out/mds --workers 2 --recipe tiny_cpu

Clips are read and checked in ``workers`` processes (decoding dominates) and written by this process in
manifest order, so the shards and their hashes are the same for any number of workers. The report always
balances: ``clips_in == written + rejected``; every rejection carries its reason and the clip it hit.
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

from jala_ds.data.config import DataConfig
from jala_ds.data.raw_clips import ClipRejected, ConvertSettings, convert_one
from jala_ds.data.schema import MDS_COLUMNS, SHARD_HASHES, SUBSETS

HELDOUT = "heldout"
"""Folder under the converter's output that holds the held-out datasets (``heldout/lab``, ``heldout/wild``)."""
DEFAULT_SHARD_BYTES = 1 << 26
"""64 MiB shards: big enough for sequential reads, small enough that one rank's shards spread over many."""


def convert_corpus(src: str | Path, out: str | Path, data: DataConfig, *, workers: int = 1,
                   shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False) -> dict[str, Any]:
    """Convert the raw corpus at ``src`` into MDS datasets under ``out``; return (and write) the report."""
    src, out = Path(src), Path(out)
    manifest = src / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: --src must be a folder with manifest.jsonl "
                                "(docs/architecture.md section 1; `jala data synth` writes one)")
    if workers < 1:
        raise ValueError(f"--workers {workers}: use at least 1")
    for folder in [out / subset for subset in SUBSETS] + [out / HELDOUT / subset for subset in SUBSETS]:
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{folder} already holds data: pass --overwrite or choose another --out")
            shutil.rmtree(folder)  # also when the new corpus lacks this subset: no stale data survives
    settings = ConvertSettings(chunk_frames=data.chunk_frames, wild_slowdown=data.wild_slowdown,
                               min_pseudo_confidence=data.min_pseudo_confidence, frame_size=data.frame_size)
    entries = read_manifest(manifest)
    report = {"clips_in": len(entries), "written": 0, "rejected": 0, "written_by_subset": Counter(),
              "heldout_by_subset": Counter(), "heldout_fraction": data.heldout_fraction,
              "rejected_by_reason": Counter(), "pseudo_labels_dropped": 0, "rejections": [],
              "settings": dataclasses.asdict(settings), "src": str(src)}
    writers: dict[Path, MDSWriter] = {}
    seen_ids: set[str] = set()
    for clip_id, outcome in convert_all(src, entries, settings, workers):
        if isinstance(outcome, ClipRejected) or clip_id in seen_ids:
            rejection = outcome if isinstance(outcome, ClipRejected) else \
                ClipRejected("duplicate_clip_id", f"{clip_id} appears more than once in the manifest")
            report["rejected"] += 1
            report["rejected_by_reason"][rejection.reason] += 1
            report["rejections"].append({"clip_id": clip_id, "reason": rejection.reason, "detail": rejection.detail})
            continue
        seen_ids.add(clip_id)
        record, pseudo_dropped = outcome
        subset = record["subset"]
        heldout = bool(record["labeled"]) and is_heldout(clip_id, data.heldout_fraction)
        folder = out / HELDOUT / subset if heldout else out / subset
        if folder not in writers:
            writers[folder] = MDSWriter(out=str(folder), columns=MDS_COLUMNS, compression=None,
                                        hashes=SHARD_HASHES, size_limit=shard_bytes)
        writers[folder].write(record)
        report["written"] += 1
        report["written_by_subset"][subset] += 1
        report["heldout_by_subset"][subset] += int(heldout)
        report["pseudo_labels_dropped"] += int(pseudo_dropped)
    # Finished (index.json written) only on success: a crashed conversion leaves no loadable half-dataset.
    for writer in writers.values():
        writer.finish()
    if report["clips_in"] != report["written"] + report["rejected"]:
        raise RuntimeError(f"conversion lost clips: {report['clips_in']} in, {report['written']} written, "
                           f"{report['rejected']} rejected")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return json.loads((out / "report.json").read_text())


def is_heldout(clip_id: str, fraction: float) -> bool:
    """Whether ``clip_id`` belongs to the held-out share ``fraction``: a hash of the id alone (not Python's
    salted ``hash``), so the split is the same on every run, machine and worker count."""
    digest = hashlib.sha256(clip_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2 ** 64


def read_manifest(manifest: Path) -> list[tuple[str, Any]]:
    """``(clip id, entry)`` per non-blank line; a line that is not JSON becomes an entry the checks reject."""
    entries = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            entry = f"line {number} is not JSON ({err.msg})"
        clip_id = entry.get("clip_id") if isinstance(entry, dict) else None
        entries.append((str(clip_id) if clip_id is not None else f"{manifest.name}:{number}", entry))
    return entries


def convert_all(src: Path, entries: list[tuple[str, Any]], settings: ConvertSettings,
                workers: int) -> Iterator[tuple[str, tuple[dict, bool] | ClipRejected]]:
    """Each clip's record or rejection, in manifest order."""
    tasks = [(src, entry, settings) for _, entry in entries]
    ids = [clip_id for clip_id, _ in entries]
    if workers == 1:
        yield from zip(ids, map(convert_one, tasks))
        return
    # spawn: the parent may hold threads (torch, tokenizers) that a forked child must not inherit;
    # convert_one lives in raw_clips, whose imports (numpy, av, PIL) keep a spawned worker's start-up short.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from zip(ids, pool.imap(convert_one, tasks, chunksize=4))

