"""AdamW parameter groups and the learning-rate schedule (linear warm-up, then cosine to a floor).

DeepSpeed builds AdamW from the effective ds_config; we hand it the parameter groups (frozen parameters left
out, no weight decay on biases and norms) and a ``LambdaLR`` it steps once per optimiser step.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from jala_ds.train.config import TrainConfig


def param_shape(param: torch.nn.Parameter) -> torch.Size:
    """The logical shape; under ZeRO-3 ``param.shape`` is the empty placeholder and ``ds_shape`` the real one."""
    return getattr(param, "ds_shape", param.shape)


def optimizer_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: matrices decay; vectors (biases, norm scales) and scalars do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if len(param_shape(param)) >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def warmup_cosine(total_steps: int, warmup_frac: float, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier at optimiser step ``step`` (0-based): linear warm-up, then cosine down to ``min_ratio``.

    Warm-up spans ``round(warmup_frac * total_steps)`` steps and starts at ``1 / warmup_steps`` rather than 0
    so the first step is not wasted; the cosine starts at 1 on the first step after warm-up and would reach
    ``min_ratio`` at step ``total_steps``, one past the last, so no step runs at the floor's zero.

    A plain function on purpose: ``LambdaLR`` saves the attributes of callable objects in its state and a
    resume would restore them, so a run resumed with a longer ``train.max_steps`` would keep the old length.
    A function leaves the schedule to the recipe; the checkpoint restores only the step count.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps}: the schedule needs at least one step")
    warmup_steps = round(warmup_frac * total_steps)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = warmup_cosine(total_steps, train.warmup_frac, train.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def follow_recipe_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, peak_lr: float) -> None:
    """After a resume: the learning rate of the restored step from this recipe's ``lr`` and schedule.

    A checkpoint restores the optimiser's last learning rate and the scheduler's base rates; with an unchanged
    recipe this rewrites the same numbers, and with a changed ``train.lr`` or ``train.max_steps`` the run
    follows the new recipe from its very next step.
    """
    scheduler.base_lrs = [peak_lr] * len(scheduler.optimizer.param_groups)
    for group, schedule in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["lr"] = peak_lr * schedule(scheduler.last_epoch)
