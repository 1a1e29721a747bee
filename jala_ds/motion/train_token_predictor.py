"""Train the action-token predictor ("JALA w/o latent") on the labelled chunks of the converted corpus.

    jala token-predictor train --recipe tiny_cpu data.mds_dir=demo_out/mds --steps 200 --out demo_out/predictor
    torchrun --nproc_per_node 8 $(which jala) token-predictor train --recipe pretrain_internvl3_2b

One step: ``token_predictor.batch_chunks`` labelled (boundary frames, hand, codes) pairs from this rank's share of
``<data.mds_dir>/lab`` and ``/wild``, the per-token cross-entropy of the predicted codes, an AdamW step of the
perceiver and the classifier (the visual encoder is frozen; DistributedDataParallel when WORLD_SIZE > 1, bf16
autocast on GPUs). Every ``log_every`` steps rank 0 logs the loss, token accuracy on the batch and on a fixed probe
of held-out pairs, and throughput to stdout and MLflow. The checkpoint (``jala_ds.motion.token_predictor``) is
written at the end and logged as the run's artifacts.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from jala_ds.config import JalaConfig
from jala_ds.config_checks import ConfigError
from jala_ds.data.convert import HELDOUT
from jala_ds.data.corpus_provenance import (
    check_chunk_frames,
    check_stored_codes,
    is_pseudo_labelled,
    tokenizer_fingerprint,
)
from jala_ds.data.motion_tokens import MotionTokenizer, build_motion_tokenizer
from jala_ds.data.schema import SUBSETS
from jala_ds.motion.checkpoint_folder import refuse_to_replace
from jala_ds.motion.chunk_pairs import ChunkPairs, LabelledChunkStream, labelled_pairs
from jala_ds.motion.pose_corpus import open_mds
from jala_ds.motion.token_predictor import (
    ActionTokenPredictor,
    build_token_predictor,
    default_checkpoint,
    save_token_predictor,
)
from jala_ds.torchrun_group import torchrun_ranks
from jala_ds.train.tracking import Tracker


def probe_pairs(cfg: JalaConfig, tokenizer: MotionTokenizer) -> ChunkPairs:
    """The first ``token_predictor.probe_chunks`` labelled pairs of the held-out clips (``<mds_dir>/heldout``),
    else of the training clips: the same pairs at every log, so the curve is comparable step to step."""
    root = Path(cfg.data.mds_dir)
    heldout = [root / HELDOUT / s for s in SUBSETS if (root / HELDOUT / s / "index.json").is_file()]
    folders = heldout or [root / s for s in SUBSETS if (root / s / "index.json").is_file()]
    found: list[ChunkPairs] = []
    for folder in folders:
        dataset = open_mds(folder)
        for i in range(len(dataset)):
            if sum(len(p.hand) for p in found) >= cfg.token_predictor.probe_chunks:
                break
            if dataset[i]["labeled"]:
                found.append(labelled_pairs(dataset[i], tokenizer, cfg.model.visual_encoder_image_size))
    if not found:
        raise ValueError(f"no labelled clip under {root}: the predictor trains on lab clips or pseudo-labelled "
                         "wild clips")
    n = cfg.token_predictor.probe_chunks
    return ChunkPairs(frames=torch.cat([p.frames for p in found])[:n], hand=torch.cat([p.hand for p in found])[:n],
                      codes=torch.cat([p.codes for p in found])[:n])


def scored(model: ActionTokenPredictor, trainer: torch.nn.Module, frames: torch.Tensor, hand: torch.Tensor,
           codes: torch.Tensor, device: torch.device,
           label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy over each position's stage codes, token accuracy) of ``model`` on uint8 ``frames``, run
    through ``trainer`` (the model, or its DistributedDataParallel wrapper)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = trainer(frames.to(device), hand.to(device))
    codes = codes.to(device)
    loss = F.cross_entropy(logits.float().flatten(0, 1), model.classes(codes).flatten(),
                           label_smoothing=label_smoothing)
    return loss, (model.codes(logits) == codes).float().mean()


@torch.no_grad()
def probe_metrics(model: ActionTokenPredictor, probe: ChunkPairs, device: torch.device) -> dict[str, float]:
    model.eval()
    loss, accuracy = scored(model, model, probe.frames, probe.hand, probe.codes, device)
    model.train()
    return {"probe_loss": loss.item(), "probe_token_accuracy": accuracy.item()}


def train_token_predictor(cfg: JalaConfig, steps: int | None = None, out_dir: str | Path | None = None,
                          overwrite: bool = False) -> Path:
    """Train on ``cfg.data.mds_dir`` for ``steps`` (default ``token_predictor.train_steps``); return the checkpoint."""
    pcfg = cfg.token_predictor
    steps = pcfg.train_steps if steps is None else steps
    if steps <= 0:
        raise ValueError(f"steps={steps}: must be a positive number of optimiser steps")
    out_dir = Path(out_dir) if out_dir else default_checkpoint(cfg)
    refuse_to_replace(out_dir, "an action-token predictor", overwrite)
    if is_pseudo_labelled(cfg.data.mds_dir):
        # Its video-only clips count as labelled: the predictor would learn an earlier predictor's guesses.
        raise ConfigError(f"data.mds_dir: {cfg.data.mds_dir} is a pseudo-labelled copy (`jala token-predictor "
                          "label`): train the predictor on the corpus it was labelled from")
    check_chunk_frames(cfg.data.mds_dir, cfg.data.chunk_frames)
    check_stored_codes(cfg.data.mds_dir, cfg.motion_tokenizer)
    with torchrun_ranks() as ranks:
        rank, world_size, device = ranks.rank, ranks.world_size, ranks.device
        torch.manual_seed(cfg.train.seed)
        tokenizer = build_motion_tokenizer(cfg.motion_tokenizer)
        stream = LabelledChunkStream(cfg.data.mds_dir, tokenizer, image_size=cfg.model.visual_encoder_image_size,
                                     seed=cfg.train.seed, rank=rank, world_size=world_size)
        workers = cfg.data.num_workers
        batches = iter(DataLoader(stream, batch_size=pcfg.batch_chunks, num_workers=workers,
                                  prefetch_factor=cfg.data.prefetch_factor if workers else None,
                                  persistent_workers=workers > 0))
        probe = probe_pairs(cfg, tokenizer)
        model = build_token_predictor(cfg).to(device).train()
        trainer: torch.nn.Module = model
        if world_size > 1:
            trainer = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        trained = [param for param in model.parameters() if param.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=pcfg.lr, weight_decay=pcfg.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        params = {**{f"token_predictor.{k}": v for k, v in vars(pcfg).items()}, "data.mds_dir": cfg.data.mds_dir,
                  "steps": steps, "world_size": world_size, "tokens_per_chunk": model.shape.tokens_per_chunk,
                  "vocab_per_part": model.shape.vocab_per_part, "model.visual_encoder": cfg.model.visual_encoder}
        tracker = Tracker(cfg.tracking, rank=rank, run_name=f"{cfg.name}-token-predictor",
                          job="token-predictor")
        tracker.log_params(params)
        if rank == 0:
            tracker.log_metrics({f"init_{k}": v for k, v in probe_metrics(model, probe, device).items()}, step=0)
        started, seen = time.perf_counter(), 0
        for step in range(1, steps + 1):
            frames, hand, codes = next(batches)
            loss, accuracy = scored(model, trainer, frames, hand, codes, device, pcfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(hand) * world_size
            if rank == 0 and (step % pcfg.log_every == 0 or step == steps):
                metrics = {"loss": loss.item(), "token_accuracy": accuracy.item(), "lr": schedule.get_last_lr()[0],
                           "chunks_per_s": seen / (time.perf_counter() - started),
                           **probe_metrics(model, probe, device)}
                tracker.log_metrics(metrics, step=step)
                print(f"token predictor step {step}/{steps} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                      flush=True)
        if rank == 0:
            save_token_predictor(model, out_dir, {"steps": steps, "world_size": world_size, "seed": cfg.train.seed,
                                                  "mds_dir": str(cfg.data.mds_dir), "run_id": tracker.run_id,
                                                  "tokenizer": tokenizer_fingerprint(cfg.motion_tokenizer),
                                                  **probe_metrics(model, probe, device)})
            for path in sorted(p for p in out_dir.iterdir() if p.is_file()):
                tracker.log_artifact(path)
            print(f"token predictor checkpoint: {out_dir}", flush=True)
        tracker.close()
    return out_dir
