"""The pretraining loop: build, resume, then {batch, forward, backward, step, EMA, log, save} until done.

Runs the same under the ``deepspeed`` launcher, torchrun, srun + torchrun, or as a single process:

    jala train --recipe tiny_cpu                                              # one process
    torchrun --nproc_per_node 2 $(which jala) train --recipe tiny_cpu
    deepspeed --num_gpus 8 $(which jala) train --recipe pretrain_internvl3_2b

``check_run`` (``preflight.py``) has already validated everything it could before this starts the process group.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from jala_ds.data.loader import build_loader
from jala_ds.data.orphaned_memory import remove_orphaned_streaming_memory
from jala_ds.model.backbone import image_token_count
from jala_ds.model.build import build_model
from jala_ds.train.checkpoint import load_checkpoint, save_checkpoint
from jala_ds.train.engine import build_engine, init_distributed, model_init_context
from jala_ds.train.flops import device_peak_flops, flops_per_sample
from jala_ds.train.metrics import LOSSES, StepMetrics
from jala_ds.train.optim import follow_recipe_schedule
from jala_ds.train.preflight import RunPlan
from jala_ds.train.progress import Progress
from jala_ds.train.resume_agreement import check_same_resume_target
from jala_ds.train.rng_state import capture_rng_state, restore_rng_state
from jala_ds.train.stop_request import stop_file, stop_requested
from jala_ds.train.tracking import Tracker
from jala_ds.train.zero_ema import ShardedEMA
from jala_ds.train.zero_sync_free_step import skipped_flag
from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

log = logging.getLogger(__name__)


def train(plan: RunPlan, build: Callable[[RunPlan, int, int], TrainingParts] | None = None) -> None:
    """Train ``plan.cfg`` to ``train.max_steps`` (0: one epoch), resuming from ``plan.resume_from``.

    ``build`` makes the model, loader, engine and EMA: pretraining's ``build_training`` by default;
    ``jala posttrain`` passes its own (``posttrain.build_posttraining``) and the rest of the loop is shared.
    """
    cfg, train_cfg = plan.cfg, plan.cfg.train
    init_distributed()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    check_same_resume_target(plan.resume_from)
    seed_everything(train_cfg.seed)
    parts = (build or build_training)(plan, rank, world_size)
    engine, ema, loader, total_steps = parts.engine, parts.ema, parts.loader, parts.total_steps

    step, run_id = 0, None
    if plan.resume_from is not None:
        run_state, rank_state = load_checkpoint(engine, plan.resume_from)
        follow_recipe_schedule(engine.lr_scheduler, train_cfg.lr)
        ema.load_state_dict(rank_state["ema"])
        loader.load_state_dict(rank_state["loader"])
        restore_rng_state(rank_state["rng"])
        step, run_id = run_state["step"], run_state.get("mlflow_run_id")
        log.info("resumed from %s at step %d", plan.resume_from, step)
        if step >= total_steps:
            log.warning("the run is at step %d of its %d: nothing to train (raise train.max_steps to go on)", step,
                        total_steps)

    tracker = Tracker(cfg.tracking, rank=rank, run_name=cfg.name, job="train", resume_run_id=run_id)
    if rank == 0:
        record_run(plan, tracker)
    progress = Progress(total_steps, step, enabled=rank == 0)
    metrics = StepMetrics(engine.device, losses=parts.losses, flops_per_sample=parts.flops_per_sample,
                          peak_flops=device_peak_flops())
    batches = endless(loader)
    compute_dtype = torch.bfloat16 if train_cfg.dtype == "bf16" else torch.float32
    stop_path = stop_file(train_cfg.out_dir)

    while step < total_steps:
        lr = engine.get_lr()[0]
        optimizer_step(engine, ema, batches, metrics, train_cfg.grad_accum_steps, compute_dtype)
        step += 1

        shown = None
        if step % train_cfg.log_every == 0 or step == total_steps:
            shown = metrics.flush(lr=lr, grad_norm=engine.get_global_grad_norm())
            tracker.log_metrics(shown, step=step)
        progress.update(step, shown)
        if train_cfg.eval_every and step % train_cfg.eval_every == 0:
            from jala_ds.eval.motion_eval import evaluate_in_training  # eval imports this module

            tracker.log_metrics(evaluate_in_training(engine.module, cfg, engine.device), step=step)
        stopping = shown is not None and step < total_steps and stop_requested(stop_path, engine.device)
        if step % train_cfg.save_every == 0 or step == total_steps or stopping:
            save_checkpoint(engine, train_cfg.out_dir, step,
                            run_state={"step": step, "config": cfg.to_dict(), "mlflow_run_id": tracker.run_id},
                            rank_state={"loader": loader.state_dict(), "rng": capture_rng_state(),
                                        "ema": ema.state_dict()},
                            keep_last=train_cfg.keep_last, extra_files=parts.checkpoint_files)
        if stopping:
            log.info("stopped at step %d of %d, as %s asks: train.resume=auto continues", step, total_steps,
                     stop_path)
            break
    progress.close()
    tracker.close()
    dist.barrier()


def untimed(phase: str) -> contextlib.AbstractContextManager:
    """The trainer's phases: not timed."""
    return contextlib.nullcontext()


def optimizer_step(engine: Any, ema: ShardedEMA, batches: Iterator[dict[str, Any]], metrics: StepMetrics,
                   grad_accum_steps: int, compute_dtype: torch.dtype,
                   phase: Callable[[str], contextlib.AbstractContextManager] = untimed) -> None:
    """One optimiser step: ``grad_accum_steps`` micro-batches of {batch to the device, forward, backward, engine
    step}, each added to the log window's sums, then the EMA. Under the recipe's ZeRO-2 engine nothing here makes
    the host wait for the device (``tests/test_train_step_host_syncs.py``): the host can queue the next step while
    the GPU runs this one. ``phase(name)`` wraps each phase: ``jala bench throughput`` times them with it."""
    for _ in range(grad_accum_steps):
        with phase("data"):
            batch = to_device(next(batches), engine.device, compute_dtype)
        with phase("forward"):
            out = engine(batch)
        with phase("backward"):
            engine.backward(out.loss)
        with phase("step"):
            engine.step()  # DeepSpeed steps the optimiser and schedule only at the accumulation boundary
            metrics.add(out, batch)
    with phase("step"):
        metrics.add_step(skipped_flag(engine))
        ema.update()


@dataclass(frozen=True)
class TrainingParts:
    """What a training step needs, built in the order ZeRO-3 requires (``build_training``)."""

    engine: Any
    """The DeepSpeed engine around the JALA model."""
    ema: ShardedEMA
    """The decoupled EMA (LAP's trunk follows LSP's, LSP's queries LAP's), updated after each optimiser step."""
    loader: Any
    """This rank's streaming loader."""
    total_steps: int
    """Optimiser steps of the run: ``train.max_steps``, or one epoch when it is 0."""
    losses: tuple[str, ...] = LOSSES
    """Loss fields of the model's output that the metrics average and log."""
    flops_per_sample: float | None = None
    """Training FLOPs of an average sample, for MFU; None when no analytic count exists for the model."""
    checkpoint_files: tuple[Path, ...] = ()
    """Files copied into every checkpoint folder (post-training: the dataset's normalisation statistics)."""


def build_training(plan: RunPlan, rank: int, world_size: int) -> TrainingParts:
    """Tokenizer and vocabulary, the model (partitioned at birth under ZeRO-3), this rank's loader, the engine
    and the EMA. The process group must exist (``init_distributed``); ``jala bench throughput`` shares this."""
    cfg, train_cfg = plan.cfg, plan.cfg.train
    if os.environ.get("LOCAL_RANK", "0") == "0":  # once per node; other jobs' loaders on the node keep theirs
        remove_orphaned_streaming_memory()
    tokenizer = load_text_tokenizer(cfg.model.pretrained, cfg.model.arch)
    vocab = add_motion_vocab(tokenizer, cfg.motion_tokenizer.vocab_per_part)
    with model_init_context(plan.ds_config):
        model = build_model(cfg, vocab)
    loader = build_loader(cfg, tokenizer, vocab, image_token_count(cfg.model), rank=rank, world_size=world_size)
    total_steps = train_cfg.max_steps or steps_per_epoch(len(loader), train_cfg.grad_accum_steps)
    engine = build_engine(model, plan.ds_config, train_cfg, total_steps)
    ema = ShardedEMA(engine.module, model.ema_pairs(), cfg.model.ema_tau)
    return TrainingParts(engine=engine, ema=ema, loader=loader, total_steps=total_steps,
                         flops_per_sample=flops_per_sample(cfg))


def steps_per_epoch(micro_batches: int, grad_accum_steps: int) -> int:
    steps = micro_batches // grad_accum_steps
    if steps < 1:
        raise ValueError(f"one epoch is {micro_batches} micro-batches per rank, fewer than train.grad_accum_steps="
                         f"{grad_accum_steps}: set train.max_steps, or use a larger corpus or smaller batches")
    return steps


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def endless(loader: Any) -> Iterator[dict[str, Any]]:
    """Epoch after epoch: each pass over the loader is the rest of its current epoch."""
    while True:
        yield from loader


TARGET_KEYS = frozenset({"actions"})
"""Float batch entries that are regression targets, not model inputs: they stay float32. A target rounded to bf16
(8 bits of mantissa, up to 0.4 % of a normalised action) would be an error the policy learns and cannot undo."""


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Tensors onto the device, float inputs in the compute dtype (the engine does not cast inputs) and float
    targets (``TARGET_KEYS``) in float32; uint8 images stay uint8, a quarter of the bytes to copy, and the model
    normalises them there."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if value.is_floating_point():
                value = value.to(torch.float32 if key in TARGET_KEYS else dtype)
        moved[key] = value
    return moved


def record_run(plan: RunPlan, tracker: Tracker) -> None:
    """Rank 0: the resolved recipe and the effective ds_config next to the checkpoints and in MLflow."""
    out_dir = Path(plan.cfg.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan.cfg.dump(out_dir / "config.yaml")
    (out_dir / "ds_config.json").write_text(json.dumps(plan.ds_config, indent=2))
    tracker.log_params(plan.cfg.flat())
    tracker.log_artifact(out_dir / "config.yaml")
    tracker.log_artifact(out_dir / "ds_config.json")
