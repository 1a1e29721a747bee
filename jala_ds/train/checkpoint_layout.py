"""Where checkpoints live on disk and which one is current; plain files and folders, no torch.

    <train.out_dir>/checkpoints/latest            the tag of the newest complete checkpoint
    <train.out_dir>/checkpoints/step_00000040/    one checkpoint (see checkpoint.py for what is inside)

``latest`` is replaced atomically (temporary file + ``os.replace``) and only after a save completed, so a
reader sees the old tag or the new one, never a torn file nor a half-written checkpoint.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from jala_ds.config_checks import ConfigError

LATEST = "latest"
TAG_PATTERN = re.compile(r"^step_(\d+)$")
RANK_FILE_GLOB = "jala_rank_*.pt"


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
