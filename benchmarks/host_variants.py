"""The training step with each of our changes to DeepSpeed's host-side path undone in turn, in one process on one
engine, the variants interleaved, on a CPU or a GPU.

    python -m benchmarks.host_variants --recipe pretrain_internvl3_2b data.mds_dir=... model.pretrained=null ...
    python -m benchmarks.host_variants --recipe tiny_cpu data.mds_dir=MDS train.ds_config=ds_configs/zero2.json

Each change is a few attributes set on the engine's optimiser or throughput timer when the engine is built, so it
can be undone and redone between steps. The variants then share the model, its compiled layers and the optimiser
state, and each costs only its own steps: one GPU lease measures them all in the time a throughput run of one
variant would spend building and compiling. The rounds interleave the variants, so drift over the run falls on
all of them alike. The variants, each against the shipped engine:

- DeepSpeed's throughput timer on (``jala_ds/train/ds_config.py`` turns it off): a device-wide sync at every
  forward and every step;
- the skip decided on the host (``zero_sync_free_step.py``): DeepSpeed's step reads four values per step;
- DeepSpeed's gradient checks (``zero_grad_checks.py``): a dozen operators per gradient before each step;
- DeepSpeed's re-pointing of every weight after each step (``zero_weight_views.py``);
- all of these at once.

A change the engine does not have (ZeRO-3 has only the timer's) has no variant. The bucketed gradient reduction
(``zero_grad_buckets.py``) replaces the backward's hooks as the engine is built and is not undone here:
``jala bench throughput ... train.bucketed_grad_reduction=false`` measures it.

A step is the trainer's own (``loop.optimizer_step``): ``grad_accum_steps`` micro-batches of {batch to the device,
forward, backward, engine step}, then the EMA update. Only the ends of a variant's steps wait for the device, so a variant's figure is the
trainer's free-running pace; on a CPU it is this process's CPU time.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import device_name, write_results
from benchmarks.zero2_proxy import clock

MISSING = object()
SHIPPED = "shipped"
ALL = "all of DeepSpeed's"


def changes_of(engine: Any) -> dict[str, list[tuple[Any, str, Any]]]:
    """For each of our changes the engine has: the attributes that undo it, as (object, name, value) with
    ``MISSING`` for an instance attribute to remove (the class's own method shows again)."""
    optimizer = engine.optimizer
    undo = {}
    if not engine.tput_timer.config.enabled:
        # DeepSpeed's default waits two timed steps before it synchronises; ours were never timed
        undo["DeepSpeed's throughput timer"] = [(engine.tput_timer.config, "enabled", True),
                                                (engine.tput_timer, "start_step", 0)]
    if getattr(optimizer, "sync_free_step", False):
        undo["the skip decided on the host"] = [
            (optimizer, "unscale_and_clip_grads", MISSING), (optimizer, "check_grad_overflow", True),
            (optimizer, "sync_free_step", False), (optimizer.optimizer, "found_inf", MISSING)]
    if "get_grad_norm_direct" in vars(optimizer):
        undo["DeepSpeed's gradient checks"] = [
            (optimizer, "has_overflow_partitioned_grads_serial", MISSING), (optimizer, "get_grad_norm_direct", MISSING)]
    if "_update_model_bit16_weights" in vars(optimizer):
        undo["DeepSpeed's re-pointing"] = [(optimizer, "_update_model_bit16_weights", MISSING)]
    return undo


@contextlib.contextmanager
def undone(attributes: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Inside, each attribute takes its undoing value; afterwards, exactly what it had before."""
    saved = [(obj, name, vars(obj).get(name, MISSING)) for obj, name, _ in attributes]
    try:
        for obj, name, value in attributes:
            if value is MISSING:
                vars(obj).pop(name, None)
            else:
                setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            if value is MISSING:
                vars(obj).pop(name, None)
            else:
                setattr(obj, name, value)


def variants_of(engine: Any) -> dict[str, list[tuple[Any, str, Any]]]:
    """The shipped engine, each change undone alone, and all of them undone together (when there are several)."""
    undo = changes_of(engine)
    variants = {SHIPPED: [], **undo}
    if len(undo) > 1:
        variants[ALL] = [attribute for attributes in undo.values() for attribute in attributes]
    return variants


def run(recipe: str, overrides: list[str], rounds: int, steps: int, warmup: int, out_dir: Path | None) -> list[dict]:
    import torch.distributed as dist

    from jala_ds.train.engine import init_distributed
    from jala_ds.train.loop import build_training, endless, optimizer_step, seed_everything
    from jala_ds.train.metrics import StepMetrics
    from jala_ds.train.preflight import check_run

    plan = check_run(recipe, [*overrides, f"train.max_steps={warmup + rounds * steps * 8}"])
    if not dist.is_initialized():
        init_distributed()
    if dist.get_world_size() != 1:
        raise SystemExit("benchmarks.host_variants runs one process: start it without a launcher")
    train = plan.cfg.train
    seed_everything(train.seed)
    parts = build_training(plan, 0, 1)
    engine, batches = parts.engine, endless(parts.loader)
    compute_dtype = torch.bfloat16 if train.dtype == "bf16" else torch.float32
    window = StepMetrics(engine.device, losses=parts.losses, flops_per_sample=None, peak_flops=None)  # never read

    def step() -> None:
        optimizer_step(engine, parts.ema, batches, window, train.grad_accum_steps, compute_dtype)

    for _ in range(warmup):    # compilation, the optimiser's state, DeepSpeed's timer reaching its first timed step
        step()
    variants = variants_of(engine)
    best = dict.fromkeys(variants, float("inf"))
    names = list(variants)
    for round_ in range(rounds):   # each round starts one variant later: no variant always runs first
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            with undone(variants[name]):
                start = clock(engine.device)
                for _ in range(steps):
                    step()
                best[name] = min(best[name], (clock(engine.device) - start) / steps)
    samples = train.micro_batch_size * train.grad_accum_steps
    rows = [{"step": name, "ms per step": best[name] * 1e3, "samples/s": samples / best[name],
             "this / shipped": best[name] / best[SHIPPED]} for name in variants]
    notes = [f"`python -m benchmarks.host_variants --recipe {recipe} --rounds {rounds} --steps {steps} "
             f"--warmup {warmup} {' '.join(overrides)}`",
             f"ZeRO stage {engine.zero_optimization_stage()}, {train.dtype}, {samples} samples per step "
             f"(micro-batches x samples: {train.grad_accum_steps} x {train.micro_batch_size}), one process",
             "one engine; each variant undoes our changes to DeepSpeed's path for its steps only, then restores them",
             f"ms per step: fastest of {rounds} interleaved rounds of {steps} steps after {warmup} untimed, each round "
             "starting one variant later; "
             + ("wall time, the device synchronised only at the ends" if engine.device.type == "cuda"
                else "this process's CPU time"),
             "with the skip on the device DeepSpeed's separate overflow pass never runs, so 'DeepSpeed's gradient "
             "checks' alone swaps in only its per-gradient norm; the last row has both of its passes",
             "not a variant here: the bucketed gradient reduction (built in; `train.bucketed_grad_reduction=false`)"]
    path = write_results("host_variants", rows, title=f"Training step with our host-side changes undone: {recipe}",
                         device=device_name(), notes=notes, out_dir=out_dir)
    print(path.read_text())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="pretrain_internvl3_2b")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the fastest counts")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per round and variant")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (compilation)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    args = parser.parse_args(argv)
    run(args.recipe, args.overrides, args.rounds, args.steps, args.warmup, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
