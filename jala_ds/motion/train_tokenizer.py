"""Train the GRVQ motion tokenizer on the MANO sequences of the converted corpus.

    jala tokenizer train --recipe tiny_cpu --steps 300 --out demo_out/tokenizer          # one process, CPU
    torchrun --nproc_per_node 8 $(which jala) tokenizer train --recipe pretrain_internvl3_2b   # data parallel

One step: a batch of 15-frame chunks from this rank's share of the corpus, the reconstruction, velocity and
commitment losses, an AdamW step of the encoders and decoders (DistributedDataParallel when WORLD_SIZE > 1),
and the EMA codebook update inside the forward. Every ``log_every`` steps rank 0 logs the losses, the
reconstruction error of a fixed probe batch in joint space (forward kinematics, MPJPE in cm), codebook usage
and throughput to stdout and MLflow (the pretraining job's ``Tracker``: this module is a job, one layer above
the rest of the motion package). The checkpoint (``jala_ds.motion.tokenizer``) is written at the end and
logged as the run's artifacts.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from jala_ds.config import JalaConfig
from jala_ds.motion.checkpoint_folder import refuse_to_replace
from jala_ds.motion.kinematics import HandKinematics
from jala_ds.motion.metrics import mpjpe
from jala_ds.motion.pose_corpus import PoseCorpus
from jala_ds.motion.tokenizer import save_tokenizer
from jala_ds.motion.tokenizer_model import MotionTokenizerModel
from jala_ds.torchrun_group import torchrun_ranks
from jala_ds.train.tracking import Tracker


def default_out_dir(cfg: JalaConfig) -> Path:
    """Where the checkpoint goes without ``--out``: the recipe's tokenizer checkpoint, else under train.out_dir."""
    return Path(cfg.motion_tokenizer.checkpoint or Path(cfg.train.out_dir) / "grvq_tokenizer")


class ProbeMetrics:
    """Reconstruction of one fixed batch, scored in joint space with each chunk's own hand skeleton."""

    def __init__(self, chunks: np.ndarray, is_right: np.ndarray, mano_model_dir: str | None):
        self.poses = torch.from_numpy(chunks)
        self.is_right = torch.from_numpy(is_right)
        self.hands = {False: HandKinematics("left", mano_model_dir), True: HandKinematics("right", mano_model_dir)}

    def joints(self, poses: torch.Tensor) -> torch.Tensor:
        out = torch.empty(*poses.shape[:-1], 21, 3)
        for right, kinematics in self.hands.items():
            mask = self.is_right == right
            out[mask] = kinematics(poses[mask])
        return out

    @torch.no_grad()
    def __call__(self, model: MotionTokenizerModel) -> dict[str, float]:
        device = model.mean.device
        model.eval()
        decoded = model.decode(model.encode(self.poses.to(device))).cpu()
        model.train()
        return {"probe_pose_mse": float(torch.mean((decoded - self.poses) ** 2)),
                "probe_mpjpe_cm": float(mpjpe(self.joints(decoded), self.joints(self.poses)))}


def codebook_usage(model: MotionTokenizerModel) -> float:
    """Share of codewords (both parts) whose EMA assignment count is at least the dead-code threshold."""
    threshold = model.cfg.dead_code_threshold
    counts = torch.cat([part.quantizer.ema_counts.flatten() for part in model.parts.values()])
    return float((counts >= threshold).float().mean()) if threshold > 0 else float((counts > 0).float().mean())


def check_codebooks_in_sync(model: MotionTokenizerModel) -> None:
    """Under data parallelism, fail loudly if any rank's codebooks drifted from rank 0's (they must not)."""
    if not dist.is_initialized():
        return
    books = torch.cat([part.quantizer.codebooks.flatten() for part in model.parts.values()])
    reference = books.clone()
    dist.broadcast(reference, src=0)
    drifted = torch.tensor([float(not torch.equal(books, reference))], device=books.device)
    dist.all_reduce(drifted)
    if drifted.item():
        raise RuntimeError("GRVQ codebooks differ between ranks: the EMA statistics were not all-reduced")


def train_tokenizer(cfg: JalaConfig, steps: int | None = None, out_dir: str | Path | None = None,
                    overwrite: bool = False) -> Path:
    """Train on ``cfg.data.mds_dir`` for ``steps`` (default ``motion_tokenizer.train_steps``); return the checkpoint."""
    tcfg = cfg.motion_tokenizer
    steps = tcfg.train_steps if steps is None else steps
    if steps <= 0:
        raise ValueError(f"steps={steps}: must be a positive number of optimiser steps")
    out_dir = Path(out_dir) if out_dir else default_out_dir(cfg)
    refuse_to_replace(out_dir, "a tokenizer checkpoint", overwrite)
    with torchrun_ranks() as ranks:
        rank, world_size, device = ranks.rank, ranks.world_size, ranks.device
        torch.manual_seed(cfg.train.seed)
        corpus = PoseCorpus(cfg.data.mds_dir)
        mean, std, stats_chunks = corpus.normalization_stats(cfg.data.chunk_frames, tcfg.stats_chunks)
        model = MotionTokenizerModel(tcfg, cfg.data.chunk_frames, torch.from_numpy(mean), torch.from_numpy(std))
        model.to(device).train()
        # Buffers (codebooks, EMA statistics) stay in step by construction: statistics are all-reduced, restarts
        # broadcast from rank 0. Broadcasting them again on every forward would only cost time.
        trainer = model
        if world_size > 1:
            trainer = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                              broadcast_buffers=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        batches = corpus.chunk_batches(cfg.data.chunk_frames, tcfg.batch_size, cfg.train.seed, rank, world_size)
        probe = ProbeMetrics(*next(corpus.chunk_batches(cfg.data.chunk_frames, tcfg.batch_size, cfg.train.seed + 1)),
                             tcfg.mano_model_dir)
        params = {**{f"motion_tokenizer.{k}": v for k, v in vars(tcfg).items()}, "data.mds_dir": cfg.data.mds_dir,
                  "data.chunk_frames": cfg.data.chunk_frames, "steps": steps, "world_size": world_size,
                  "normalization_chunks": stats_chunks}
        tracker = Tracker(cfg.tracking, rank=rank, run_name=f"{cfg.name}-tokenizer", job="tokenizer")
        tracker.log_params(params)
        if rank == 0:
            tracker.log_metrics({f"init_{k}": v for k, v in probe(model).items()}, step=0)
        started, seen = time.perf_counter(), 0
        for step in range(1, steps + 1):
            chunks, _ = next(batches)
            losses = trainer(torch.from_numpy(chunks).to(device))
            optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            optimizer.step()
            schedule.step()
            seen += len(chunks) * world_size
            if rank == 0 and (step % tcfg.log_every == 0 or step == steps):
                metrics = {"loss": losses.total.item(), "reconstruction": losses.reconstruction.item(),
                           "velocity": losses.velocity.item(), "commitment": losses.commitment.item(),
                           "restarted_codes": float(losses.restarted), "codebook_usage": codebook_usage(model),
                           "lr": schedule.get_last_lr()[0], "chunks_per_s": seen / (time.perf_counter() - started),
                           **probe(model)}
                tracker.log_metrics(metrics, step=step)
                print(f"tokenizer step {step}/{steps} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                      flush=True)
        check_codebooks_in_sync(model)
        if rank == 0:
            save_tokenizer(model, out_dir, {"steps": steps, "world_size": world_size, "seed": cfg.train.seed,
                                            "mds_dir": str(cfg.data.mds_dir), "normalization_chunks": stats_chunks})
            for path in sorted(out_dir.iterdir()):
                tracker.log_artifact(path)
            print(f"tokenizer checkpoint: {out_dir}", flush=True)
        tracker.close()
    return out_dir
