"""Train and tracking sections: batch arithmetic, optimiser, schedule, checkpoints, MLflow."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jala_ds.config_checks import require


@dataclass
class TrainConfig:
    micro_batch_size: int = 16
    """Samples per GPU per forward pass (16 in the paper); packing (``data.pack``) fits them into fewer rows."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimiser step."""
    global_batch_size: int = 128
    """Samples per optimiser step over all ranks; must equal micro_batch_size * grad_accum_steps * world size."""
    lr: float = 1e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    betas: list[float] = None  # type: ignore[assignment]
    """AdamW betas."""
    warmup_frac: float = 0.05
    """Share of the steps spent warming up linearly, then cosine decay to ``min_lr_ratio * lr``."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine schedule, relative to ``lr``."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    max_steps: int = 0
    """Optimiser steps; 0 means one epoch of the corpus."""
    dtype: Literal["bf16", "fp32"] = "bf16"
    """Training precision (fp16 is not offered: DeepSpeed refuses it on CPU and bf16 is the paper's)."""
    ds_config: str = "ds_configs/zero3_bf16.json"
    """DeepSpeed JSON config; batch sizes, clipping and dtype are filled from this recipe, conflicts refused."""
    zero3_gather_by_block: bool = True
    """Under ZeRO-3, gather each repeated layer's parameters in one call instead of one call per sub-module
    (``jala_ds/train/zero_leaves.py``); same bytes, far fewer hooks."""
    compile_blocks: str | None = None
    """torch.compile backend for each repeated layer's forward (``jala_ds/train/compiled_blocks.py``):
    ``inductor`` for fewer, fused kernels in a host-bound step; ``aot_eager`` traces without generating code
    (debugging, tests). None (eager) by default; the full recipe sets inductor (measured on an H200:
    docs/performance.md, section 5)."""
    cudnn_attention: bool = False
    """Let torch's SDPA pick its cuDNN backend (vision tower, frame encoder, perceivers). Off: on an H200 each
    cuDNN attention call cost ~2 ms of host time, 44 calls per step; flash attention has no per-call set-up."""
    multi_tensor_grad_checks: bool = True
    """Under ZeRO-1/2, check the gradients for inf/NaN and take their norm in a few multi-tensor launches instead
    of a dozen operators per gradient (``jala_ds/train/zero_grad_checks.py``); same decisions. False: DeepSpeed's."""
    bucketed_grad_reduction: bool = True
    """Under ZeRO-2, reduce the gradients a bucket at a time (one join, one reduction, one add per bucket) instead
    of DeepSpeed's hook work and two copies per parameter (``jala_ds/train/zero_grad_buckets.py``); the same
    gradients. False: DeepSpeed's."""
    sync_free_step: bool = True
    """Under ZeRO-1/2 in bf16 with torch's fused AdamW, decide on the device whether a step with inf/NaN gradients
    is skipped, so the step never makes the host wait for the GPU (``jala_ds/train/zero_sync_free_step.py``); the
    same weights. A skipped step still advances the learning-rate schedule. False: DeepSpeed's."""
    out_dir: str = "runs/jala"
    """Checkpoints, the resolved config and exports go here."""
    save_every: int = 1000
    """Save a checkpoint every this many steps (and at the end)."""
    keep_last: int = 3
    """Checkpoints kept on disk; older ones are deleted after a newer save completes."""
    resume: str = "auto"
    """``auto``: continue from ``out_dir``'s latest checkpoint if any; ``none``; or a checkpoint folder."""
    log_every: int = 10
    """Log metrics every this many steps."""
    seed: int = 1234
    """Seed of model init, data order and masking."""
    eval_every: int = 0
    """Every this many steps, generate motion for ``eval_limit`` clips of each held-out split
    (``<data.mds_dir>/heldout``) and log the Table-1 metrics as ``eval_<split>_<hand>_<metric>``; 0 = never.
    Every rank decodes the same clips (under ZeRO-3 each forward is a collective); rank 0 logs."""
    eval_limit: int = 4
    """Held-out clips per split that the periodic evaluation decodes."""

    def __post_init__(self) -> None:
        if self.betas is None:
            self.betas = [0.9, 0.95]

    def validate(self) -> None:
        require(self.micro_batch_size > 0, "train.micro_batch_size", "must be positive")
        require(self.grad_accum_steps > 0, "train.grad_accum_steps", "must be positive")
        require(self.global_batch_size > 0, "train.global_batch_size", "must be positive")
        require(self.global_batch_size % (self.micro_batch_size * self.grad_accum_steps) == 0,
                "train.global_batch_size",
                f"{self.global_batch_size} is not a multiple of micro_batch_size * grad_accum_steps = "
                f"{self.micro_batch_size * self.grad_accum_steps}")
        require(self.lr > 0, "train.lr", "must be positive")
        require(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", "must lie in [0, 1] (a share of train.lr)")
        require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas",
                "must be two numbers in [0, 1), e.g. [0.9, 0.95]")
        require(0.0 <= self.warmup_frac < 1.0, "train.warmup_frac", "must lie in [0, 1)")
        require(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
        require(self.max_steps >= 0, "train.max_steps", "must be >= 0 (0 = one epoch)")
        require(self.eval_every >= 0, "train.eval_every", "must be >= 0 (0 = no periodic evaluation)")
        require(self.eval_limit > 0, "train.eval_limit", "must be positive")
        require(bool(self.out_dir.strip()), "train.out_dir",
                "must name a folder (empty would write the run into the working directory)")
        require(self.save_every > 0, "train.save_every", "must be positive")
        require(self.log_every > 0, "train.log_every", "must be positive")
        require(self.keep_last > 0, "train.keep_last", "must keep at least one checkpoint")
        if self.compile_blocks is not None:
            backends = _compile_backends()
            require(self.compile_blocks in backends, "train.compile_blocks",
                    f"'{self.compile_blocks}' is not a torch.compile backend: use inductor, or one of {backends}")

    def check_world_size(self, world_size: int) -> None:
        """The batch arithmetic, checked once the world size is known (still before any process group)."""
        per_step = self.micro_batch_size * self.grad_accum_steps * world_size
        per_micro_step = self.micro_batch_size * world_size
        # Offer grad_accum_steps only where some value of it gives the global batch.
        accumulate = (f"train.grad_accum_steps={self.global_batch_size // per_micro_step} or "
                      if self.global_batch_size % per_micro_step == 0 else "")
        require(per_step == self.global_batch_size, "train.global_batch_size",
                f"{self.global_batch_size} != micro_batch_size {self.micro_batch_size} x grad_accum_steps "
                f"{self.grad_accum_steps} x world size {world_size} = {per_step}: set {accumulate}"
                f"train.global_batch_size={per_step}")


@dataclass
class TrackingConfig:
    enabled: bool = True
    """Log the run to MLflow (rank 0 only)."""
    uri: str | None = None
    """Tracking URI; None uses MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db in the working dir."""
    experiment: str = "jala"
    """MLflow experiment name; runs that should be compared share it."""

    def validate(self) -> None:
        require(bool(self.experiment), "tracking.experiment", "must be a non-empty name")


def _compile_backends() -> list[str]:
    import torch._dynamo  # only when compilation is asked for: importing dynamo takes a second

    return torch._dynamo.list_backends(exclude_tags=())
