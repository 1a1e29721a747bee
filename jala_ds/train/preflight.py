"""Everything ``jala train`` can check before a process group exists: recipe, batch arithmetic against the
launcher's WORLD_SIZE, the effective ds_config, the corpus (converted with the recipe's chunk length, any codes
it stores the recipe's tokenizer's), the local folders the model loads, the checkpoint to resume from (saved by
as many ranks under the same ZeRO stage, with the same architecture, and with no newer checkpoint of
``train.out_dir`` that this run would overwrite), that no request to stop is left over from an earlier
launch, and that ``train.out_dir`` is (or can become) a folder this process may write.

Any problem is one :class:`ConfigError` line; the CLI prints it and exits with code 2. Nothing heavier than YAML
and NumPy is imported here, so a bad command fails in a fraction of a second on every rank.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jala_ds.config import JalaConfig, flatten, load_config
from jala_ds.config_checks import ConfigError
from jala_ds.data.corpus_provenance import check_chunk_frames, check_stored_codes
from jala_ds.data.schema import SUBSETS
from jala_ds.train.checkpoint_layout import check_no_newer_checkpoint, check_resumable, resume_target
from jala_ds.train.ds_config import build_ds_config
from jala_ds.train.stop_request import stop_file

ARCHITECTURE_KEYS = (
    "model.image_size", "model.visual_encoder", "model.visual_encoder_image_size", "model.lsp_context",
    "model.perceiver_queries", "model.perceiver_width", "model.perceiver_heads", "model.perceiver_layers",
    "motion_tokenizer.downsample", "motion_tokenizer.groups", "motion_tokenizer.stages",
    "motion_tokenizer.codes_per_stage",
)
"""Recipe values that shape the pretrained weights: a post-training recipe must repeat them."""
RESUME_KEYS = (*ARCHITECTURE_KEYS, "model.arch", "model.align", "model.decoupled_ema", "action_head.layers",
               "action_head.heads", "action_head.width", "action_head.action_horizon", "action_head.action_dim",
               "action_head.state_dim")
"""Recipe values that shape a checkpoint's weights and optimiser state: a resume must keep them."""
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
"""``org/name``: a model id transformers may find in its local cache; anything else must be a folder."""


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
    check_corpus(cfg, recipe)
    return plan_for(cfg, world_size, ds_config)


def check_corpus(cfg: JalaConfig, recipe: str) -> None:
    """``data.mds_dir`` is a corpus `jala data convert` wrote, cut into chunks of ``data.chunk_frames``; the codes a
    copy stores (`jala data tokenize`, `jala token-predictor label`) are the recipe's tokenizer's."""
    root = Path(cfg.data.mds_dir)
    indexes = [f"{subset}/index.json" for subset in SUBSETS]
    if not any((root / index).is_file() for index in indexes):
        raise ConfigError(f"data.mds_dir: '{root}' holds no converted corpus ({' or '.join(indexes)}): run "
                          f"`jala data convert --recipe {recipe} --src RAW --out {root}` first, or point "
                          "data.mds_dir at the folder it wrote")
    check_chunk_frames(root, cfg.data.chunk_frames)
    cfg.motion_tokenizer.check_binning_chunk_frames(cfg.data.chunk_frames)
    check_stored_codes(root, cfg.motion_tokenizer)


def check_local_folders(cfg: JalaConfig) -> None:
    """The folders the model loads exist: nothing is downloaded at run time, and transformers would read a
    missing path as a model id and fail deep inside, after the process group started."""
    models = {"model.pretrained": cfg.model.pretrained, "model.visual_encoder_path": cfg.model.visual_encoder_path}
    tokenizer = cfg.motion_tokenizer.checkpoint if cfg.motion_tokenizer.kind == "grvq" else None
    for key, folder in [*models.items(), ("motion_tokenizer.checkpoint", tokenizer)]:
        if folder is None or Path(folder).is_dir() or (key in models and HUB_ID.fullmatch(folder)):
            continue
        raise ConfigError(f"{key}: folder '{folder}' not found: point it at a local checkpoint folder (nothing is "
                          "downloaded at run time)")


def check_out_dir(out_dir: str) -> None:
    """``train.out_dir`` is a folder, or can be made one, that this process may write: else the run fails writing
    its config.yaml with a traceback, after every rank has loaded the model."""
    path = Path(out_dir)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"train.out_dir: '{existing}' is a file, not a folder: point train.out_dir at a folder "
                          "(new or a run's)")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"train.out_dir: '{existing}' is not writable by this user: choose a train.out_dir you "
                          "may write")


def check_same_architecture(cfg: JalaConfig, resume_from: Path) -> None:
    """The recipe keeps the values that shaped the checkpoint (its run's ``config.yaml``): DeepSpeed would fail
    part-way through loading, with a tensor size deep in its state dict."""
    recorded = resume_from.parent.parent / "config.yaml"
    if not recorded.is_file():
        return
    saved, ours = flatten(yaml.safe_load(recorded.read_text())), cfg.flat()
    for key in RESUME_KEYS:
        if key in saved and key in ours and saved[key] != ours[key]:
            raise ConfigError(f"{key}={ours[key]!r} but {resume_from} was saved with {saved[key]!r}: resume with "
                              f"{key}={saved[key]!r}, or start afresh in a new train.out_dir")


def plan_for(cfg: JalaConfig, world_size: int, ds_config: dict[str, Any]) -> RunPlan:
    """The plan of a checked config (``jala posttrain`` checks its own data before calling it)."""
    check_out_dir(cfg.train.out_dir)
    resume_from = resume_target(cfg.train.resume, cfg.train.out_dir)
    check_no_newer_checkpoint(resume_from, cfg.train.out_dir)
    check_local_folders(cfg)
    if resume_from is not None:
        check_resumable(resume_from, world_size, ds_config.get("zero_optimization", {}).get("stage", 0))
        check_same_architecture(cfg, resume_from)
    stop = stop_file(cfg.train.out_dir)
    if stop.exists():
        raise ConfigError(f"{stop} exists: an earlier launch was asked to stop (jala_ds/train/stop_request.py), and "
                          "this one would stop at its first log step: delete the file, then relaunch")
    return RunPlan(cfg=cfg, ds_config=ds_config, world_size=world_size, resume_from=resume_from)
