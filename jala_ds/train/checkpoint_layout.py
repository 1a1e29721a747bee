"""Where checkpoints live on disk and which one is current; plain files and folders, no torch.

    <train.out_dir>/checkpoints/latest            the tag of the newest complete checkpoint
    <train.out_dir>/checkpoints/step_00000040/    one checkpoint (see checkpoint.py for what is inside)
    <train.out_dir>/checkpoints/step_00000040/saved_with.json   the world size and ZeRO stage that saved it

``latest`` is replaced atomically (temporary file + ``os.replace``) and only after a save completed, so a
reader sees the old tag or the new one, never a torn file nor a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from jala_ds.config_checks import ConfigError

LATEST = "latest"
TAG_PATTERN = re.compile(r"^step_(\d+)$")
RANK_FILE_GLOB = "jala_rank_*.pt"
SAVED_WITH = "saved_with.json"
"""The world size and ZeRO stage a checkpoint was saved with, as plain JSON: preflight checks a resume against
them before any process group or torch import."""


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(rank: int) -> str:
    """Each rank's own state in a checkpoint folder."""
    return f"jala_rank_{rank:05d}.pt"


def read_latest(root: Path) -> str | None:
    pointer = root / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = checkpoints_dir(out_dir)
    tag = read_latest(root)
    return root / tag if tag else None


def resume_target(resume: str, out_dir: str) -> Path | None:
    """What ``train.resume`` points at: ``auto`` (latest of out_dir, if any), ``none``, or a checkpoint folder."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    folder = Path(resume)
    if not (folder.is_dir() and TAG_PATTERN.match(folder.name)):
        raise ConfigError(f"train.resume: '{resume}' is not a checkpoint folder (.../checkpoints/step_NNNNNNNN): "
                          "point it at one, or use auto or none")
    return folder


def check_no_newer_checkpoint(resume_from: Path | None, out_dir: str) -> None:
    """Refuse a start (``resume_from`` None) or a resume from an older checkpoint in an ``out_dir`` that holds newer
    ones: its saves would replace them, one step folder at a time, and move ``latest`` backwards."""
    latest = latest_checkpoint(out_dir)
    if latest is None or (resume_from is not None and resume_from.resolve() == latest.resolve()):
        return
    if resume_from is None:
        raise ConfigError(f"train.resume=none: train.out_dir={out_dir} holds a run (latest: {latest.name}) whose "
                          "checkpoints this one would overwrite: give a new train.out_dir, or continue it with "
                          "train.resume=auto")
    if resume_from.parent.resolve() == latest.parent.resolve():
        raise ConfigError(f"train.resume: {resume_from.name} is older than train.out_dir={out_dir}'s latest "
                          f"checkpoint ({latest.name}), which this run's saves would overwrite: to branch from it, "
                          "give a new train.out_dir")


def record_saved_with(folder: Path, world_size: int, zero_stage: int) -> None:
    (folder / SAVED_WITH).write_text(json.dumps({"world_size": world_size, "zero_stage": zero_stage}))


def check_resumable(folder: Path, world_size: int, zero_stage: int) -> None:
    """Refuse, in one line, a resume of ``folder`` by ``world_size`` ranks under ZeRO-``zero_stage`` that DeepSpeed
    would fail part-way through loading: its ZeRO shards, and our loader positions and EMA shards, are split by the
    saving world size and laid out by the saving stage. A checkpoint from before ``saved_with.json`` has its world
    size counted from its rank files; its stage is checked later, when its rank files are read."""
    record = folder / SAVED_WITH
    rank_files = len(list(folder.glob(RANK_FILE_GLOB)))
    if not record.is_file() and rank_files == 0:
        raise ConfigError(f"train.resume: {folder} holds no checkpoint (no {SAVED_WITH}, no {RANK_FILE_GLOB}): point "
                          "train.resume at a checkpoint folder a run saved, or start afresh in a new train.out_dir")
    saved = json.loads(record.read_text()) if record.is_file() else {"world_size": rank_files, "zero_stage": None}
    if saved["world_size"] != world_size:
        raise ConfigError(f"train.resume: {folder} was saved by {saved['world_size']} ranks and this launch has "
                          f"{world_size}: relaunch with {saved['world_size']} ranks (its ZeRO shards and per-rank "
                          "loader and EMA state are split that many ways), or start afresh in a new "
                          "train.out_dir")
    if saved["zero_stage"] not in (None, zero_stage):
        raise ConfigError(f"train.ds_config: {folder} was saved under ZeRO-{saved['zero_stage']} and this run's "
                          f"config is ZeRO-{zero_stage}: resume with the ds_config the run started with (its "
                          "train.out_dir keeps a copy, ds_config.json), or start afresh in a new train.out_dir")
    if rank_files < world_size:  # a save killed before every rank wrote; 'latest' never named it
        raise ConfigError(f"train.resume: {folder} is incomplete (the files of {rank_files} of its {world_size} "
                          "ranks: a save that did not finish): resume from the run's latest checkpoint "
                          "(train.resume=auto)")


def publish_latest(root: Path, tag: str) -> None:
    """Point ``latest`` at ``tag`` atomically: readers see the old tag or the new one, never a torn file."""
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(tag)
    os.replace(tmp, root / LATEST)


def prune(root: Path, keep_last: int) -> None:
    """Delete complete checkpoints older than the newest ``keep_last`` (never the one ``latest`` names)."""
    latest = read_latest(root)
    if latest is None:
        return
    newest = int(TAG_PATTERN.match(latest).group(1))
    steps = sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := TAG_PATTERN.match(p.name)))
    committed = [s for s in steps if s <= newest]
    for step in committed[:-keep_last]:
        shutil.rmtree(root / tag_for(step))
