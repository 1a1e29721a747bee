"""Saving and loading a checkpoint: DeepSpeed's engine state plus ours, then the ``latest`` pointer.

A checkpoint folder (``checkpoint_layout.py`` says where) holds DeepSpeed's files (model, ZeRO shards,
scheduler) with the run state (step, resolved config, MLflow run id) as client state, and one
``jala_rank_NNNNN.pt`` per rank with that rank's own state (loader position, RNG states, EMA shadows) and the
ZeRO stage it was saved under: DeepSpeed lays out each stage's shards differently, so a resume under another
stage is refused before DeepSpeed reads anything. ``saved_with.json`` records the world size and stage for
preflight, which refuses a mismatch before any process group starts.

A save is: every rank writes its files; barrier; rank 0 replaces ``latest`` (write a temporary file, then
``os.replace``) and deletes checkpoints beyond ``train.keep_last``. A crash or kill anywhere before the
replace leaves ``latest`` on the previous checkpoint, which stays intact. Every torch file loads with
``torch.load(weights_only=True)`` (see ``safe_checkpoint_engine.py``).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from jala_ds.train import checkpoint_layout as layout
from jala_ds.train.safe_checkpoint_engine import SafeCheckpointEngine, load_plain, save_plain

ZERO_STAGE_KEY = "zero_stage"
"""Where a rank file records the ZeRO stage of the engine that saved it."""


def install_safe_engine(engine: Any) -> None:
    """Make the DeepSpeed engine write and read plain, ``weights_only``-loadable files."""
    engine.checkpoint_engine = SafeCheckpointEngine()


def save_checkpoint(engine: Any, out_dir: str | Path, step: int, run_state: dict[str, Any],
                    rank_state: dict[str, Any], keep_last: int, extra_files: tuple[Path, ...] = ()) -> Path:
    """Collective: every rank calls it. Returns the checkpoint folder once ``latest`` points at it.
    ``extra_files`` are copied in by rank 0 before ``latest`` moves (a checkpoint carries its norm stats)."""
    root = layout.checkpoints_dir(out_dir)
    tag = layout.tag_for(step)
    folder = root / tag
    rank = dist.get_rank()
    if tag == layout.read_latest(root):
        raise ValueError(f"refusing to overwrite {folder}: it is the checkpoint 'latest' points to")
    if rank == 0 and folder.exists():
        shutil.rmtree(folder)  # leftovers of a save that crashed before 'latest' moved
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state=run_state, save_latest=False)
    save_plain({**rank_state, ZERO_STAGE_KEY: engine.zero_optimization_stage()},
               str(folder / layout.rank_file(rank)))
    if rank == 0:
        for path in extra_files:
            shutil.copy2(path, folder / Path(path).name)
        layout.record_saved_with(folder, dist.get_world_size(), engine.zero_optimization_stage())
    dist.barrier()  # every rank has written everything: only now may 'latest' move
    if rank == 0:
        layout.publish_latest(root, tag)
        layout.prune(root, keep_last)
    return folder


def load_checkpoint(engine: Any, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Collective: restore the engine from ``folder``; returns (run state, this rank's state)."""
    rank = dist.get_rank()
    own = folder / layout.rank_file(rank)
    if not own.is_file():
        saved = len(list(folder.glob(layout.RANK_FILE_GLOB)))
        raise RuntimeError(f"{folder} has no state for rank {rank} (it was saved by {saved} ranks): resume "
                           f"with the same world size, or start afresh in a new train.out_dir")
    rank_state = load_plain(str(own))
    saved_stage, stage = rank_state.pop(ZERO_STAGE_KEY, None), engine.zero_optimization_stage()
    if saved_stage is not None and saved_stage != stage:
        raise RuntimeError(f"{folder} was saved under ZeRO-{saved_stage} and this run's train.ds_config is ZeRO-{stage}: "
                           f"resume with the ds_config the run started with (its train.out_dir keeps a copy, "
                           f"ds_config.json), or start afresh in a new train.out_dir")
    path, run_state = engine.load_checkpoint(str(folder.parent), tag=folder.name, load_module_strict=True,
                                             load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint in {folder}: is the folder complete?")
    return run_state, rank_state
