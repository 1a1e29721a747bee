"""Everything ``jala train`` can check before a process group exists: recipe, batch arithmetic against the
launcher's WORLD_SIZE, the effective ds_config, the data folder, the checkpoint to resume from (and that it was
saved by as many ranks under the same ZeRO stage).

Any problem is one :class:`ConfigError` line; the CLI prints it and exits with code 2. Only the standard
library and YAML are imported here, so a bad command fails in a fraction of a second on every rank.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jala_ds.config import JalaConfig, load_config
from jala_ds.config_checks import ConfigError
from jala_ds.train.checkpoint_layout import check_resumable, resume_target
from jala_ds.train.ds_config import build_ds_config


@dataclass(frozen=True)
class RunPlan:
    """A checked run, ready to start."""

    cfg: JalaConfig
    ds_config: dict[str, Any]
    """The effective DeepSpeed config (recipe values filled in)."""
    world_size: int
    resume_from: Path | None
    """Checkpoint folder to continue from, or None for a fresh start."""


def launcher_world_size() -> int:
    """WORLD_SIZE as the launcher (deepspeed, torchrun, srun + torchrun) exports it; 1 without a launcher."""
    raw = os.environ.get("WORLD_SIZE", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"WORLD_SIZE={raw!r} in the environment is not a positive integer: launch with "
                          "deepspeed or torchrun, or unset WORLD_SIZE for a single process")
    return int(raw)


def check_run(recipe: str, overrides: list[str]) -> RunPlan:
    cfg = load_config(recipe, overrides)
    world_size = launcher_world_size()
    ds_config = build_ds_config(cfg.train, world_size)
    if not Path(cfg.data.mds_dir).is_dir():
        raise ConfigError(f"data.mds_dir: folder '{cfg.data.mds_dir}' not found: run `jala data convert --out "
                          f"{cfg.data.mds_dir}` first, or point data.mds_dir at a converted corpus")
    return plan_for(cfg, world_size, ds_config)


def plan_for(cfg: JalaConfig, world_size: int, ds_config: dict[str, Any]) -> RunPlan:
    """The plan of a checked config (``jala posttrain`` checks its own data before calling it)."""
    resume_from = resume_target(cfg.train.resume, cfg.train.out_dir)
    if resume_from is not None:
        check_resumable(resume_from, world_size, ds_config.get("zero_optimization", {}).get("stage", 0))
    return RunPlan(cfg=cfg, ds_config=ds_config, world_size=world_size, resume_from=resume_from)
