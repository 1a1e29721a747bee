"""The throughput result as a table row, a printed summary, a dated markdown + PNG, and an MLflow run.

The markdown is what ``jala plan`` calibrates from (``calibrate.py``): a ``- device:`` line and a table with a
``gpus`` column and a ``samples/s`` column holding the rate of all ``gpus`` ranks together.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from jala_ds.bench.throughput import PHASES, PROFILED_STEPS, ThroughputResult

EPOCH_SAMPLES = 7_500_000
"""UniHand-Mix's 7.5M samples: the epoch the projection is for."""
PROJECTION_GPUS = 8
PAPER_EPOCH_HOURS = 68.0
"""The paper's epoch on 8 x A800."""
TARGET_EPOCH_HOURS = 12.0
"""DESIGN.md's target for one epoch on 8 GPUs."""
PHASE_LABELS = {"data": "data wait", "forward": "forward", "backward": "backward", "step": "optimizer step"}


def result_row(result: ThroughputResult) -> dict[str, Any]:
    """One table row; times in milliseconds per optimiser step."""
    row: dict[str, Any] = {"gpus": result.world_size, "micro batch": result.micro_batch_size,
                           "grad accum": result.grad_accum_steps, "step ms": result.step_seconds * 1e3}
    if result.free_running_step_seconds is not None:
        row["free-running step ms"] = result.free_running_step_seconds * 1e3
    row.update({f"{PHASE_LABELS[name]} ms": result.phase_seconds[name] * 1e3 for name in PHASES})
    mfu = result.mfu
    row.update({
        "samples/s": result.samples_per_s_per_rank * result.world_size,
        "samples/s per rank": result.samples_per_s_per_rank,
        "tokens/s per rank": result.tokens_per_s_per_rank,
        "GFLOP per sample": result.flops_per_sample / 1e9,
        "TFLOP/s per rank": result.achieved_tflops_per_rank,
        "mfu": "n/a" if mfu is None else f"{mfu:.1%}",
        "peak memory GB": result.peak_memory_gb,
        f"epoch h on {PROJECTION_GPUS} GPUs": result.epoch_hours(EPOCH_SAMPLES, PROJECTION_GPUS),
    })
    if result.resident_memory_gb is not None:
        row["resident memory GB"] = result.resident_memory_gb
    if result.gpu_busy_seconds is not None:
        row["GPU busy ms"] = result.gpu_busy_seconds * 1e3
    if result.gpu_matmul_seconds is not None:
        row["GPU matmul+attention ms"] = result.gpu_matmul_seconds * 1e3
    if result.gpu_optimizer_seconds is not None:
        row["GPU optimizer ms"] = result.gpu_optimizer_seconds * 1e3
    return row


def result_notes(result: ThroughputResult, recipe: str) -> list[str]:
    hours = result.epoch_hours(EPOCH_SAMPLES, PROJECTION_GPUS)
    communication = ("inside forward, backward and optimizer step (ZeRO-3's gathers and reduce-scatters are "
                     "not timed apart)" if result.world_size > 1 else "none (one rank)")
    notes = [
        f"recipe: {recipe}; {result.steps} measured steps after {result.warmup} warm-up steps, averaged over "
        f"{result.world_size} rank(s)",
        "samples/s is all ranks together (what `jala plan --calibrate` reads); the per-rank columns are one rank's",
        f"communication: {communication}",
        *([] if result.zero_stage is None else
          [f"ZeRO stage: {result.zero_stage} (host time per step differs between stages: `jala plan` takes a host "
           "floor from this result only for a plan of the same stage)"]),
        "mfu: n/a without a known GPU (model TFLOP/s is still reported)" if result.mfu is None
        else "mfu: model FLOP/s per rank over the card's dense bf16 peak",
        f"one epoch of {EPOCH_SAMPLES / 1e6:g}M samples on {PROJECTION_GPUS} GPUs at this per-rank rate: "
        f"{hours:.3g} h (paper: {PAPER_EPOCH_HOURS:g} h on 8 x A800; target: {TARGET_EPOCH_HOURS:g} h)",
    ]
    if result.free_running_step_seconds is not None:
        notes.append("step ms is timed with the device synchronised at every phase edge, so the phases add up to "
                     "it; free-running step ms over as many steps again, synchronised only at both ends, as the "
                     "trainer runs: lower by what a phase's host work overlaps of the GPU work left queued before "
                     "it. The rates, MFU and epoch hours are the synchronised steps'")
    if result.resident_memory_gb is not None:
        notes.append("peak memory GB is the measured steps' peak; resident memory GB what was allocated as they "
                     "began (weights, gradients, optimiser state); the difference is the activations' peak, which "
                     "`jala plan` scales by the micro-batch")
    if result.gpu_busy_seconds is not None:
        notes.append(f"GPU busy ms: the time the GPU's kernels ran per step over {PROFILED_STEPS} profiled steps "
                     "after the measured ones (rank 0's; kernels on concurrent streams count twice, so it is an "
                     "upper bound); well under the step time means the host set the pace, and `jala plan` then "
                     "takes the step time as a host floor; GPU matmul+attention ms is the part of it in matrix "
                     "multiplies and attention, which `jala plan` scales to another card by its peak FLOP/s, and "
                     "the rest by its memory bandwidth; GPU optimizer ms is the part the optimiser step and the EMA "
                     "update launched, over this rank's shard, which `jala plan` leaves out of the compute and "
                     "prices per target shard itself")
    if result.compilations:
        notes.append(f"WARNING: torch.compile compiled {result.compilations} graph(s) during the measured steps, so "
                     "their compile time is in the figures: rerun with a larger --warmup")
    return notes


def step_split_figure(result: ThroughputResult, title: str) -> Any:
    """A bar per phase (ms per step); the title gives the measured step time and the sum of the parts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [PHASE_LABELS[name] for name in PHASES]
    values = [result.phase_seconds[name] * 1e3 for name in PHASES]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(labels, values, color="tab:blue")
    ax.set_ylabel("ms per step")
    ax.set_title(f"{title}\nstep {result.step_seconds * 1e3:.4g} ms, parts add to {sum(values):.4g} ms")
    fig.tight_layout()
    return fig


def benchmark_report() -> ModuleType:
    """``benchmarks/report.py``. ``benchmarks/`` sits beside the package in the checkout and is not installed,
    so the checkout's root joins the import path when the console script runs from elsewhere."""
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.append(root)
    return importlib.import_module("benchmarks.report")


def write_throughput_result(result: ThroughputResult, recipe: str, out_dir: str | Path | None) -> Path:
    """``<date>_throughput_<device>.md`` + PNG in ``out_dir`` (default ``benchmarks/results/``), and MLflow."""
    title = f"training throughput, {recipe}"
    row = result_row(result)
    metrics = {key: value for key, value in (
        ("step_ms", row["step ms"]), ("free_running_step_ms", row.get("free-running step ms")),
        ("samples_per_s", row["samples/s"]),
        ("samples_per_s_per_rank", result.samples_per_s_per_rank),
        ("tokens_per_s_per_rank", result.tokens_per_s_per_rank),
        ("tflops_per_rank", result.achieved_tflops_per_rank), ("peak_memory_gb", result.peak_memory_gb),
        ("epoch_hours_8_gpus", result.epoch_hours(EPOCH_SAMPLES, PROJECTION_GPUS)), ("mfu", result.mfu),
        ("gpu_busy_ms", None if result.gpu_busy_seconds is None else result.gpu_busy_seconds * 1e3),
        ("gpu_matmul_ms", None if result.gpu_matmul_seconds is None else result.gpu_matmul_seconds * 1e3),
        ("gpu_optimizer_ms", None if result.gpu_optimizer_seconds is None else result.gpu_optimizer_seconds * 1e3))
        if value is not None}
    metrics.update({f"{name}_ms": seconds * 1e3 for name, seconds in result.phase_seconds.items()})
    return benchmark_report().write_results("throughput", [row], title=title, device=result.device,
                                             notes=result_notes(result, recipe),
                                             figure=step_split_figure(result, title),
                                             out_dir=Path(out_dir) if out_dir is not None else None,
                                             mlflow_metrics=metrics)


def summary(result: ThroughputResult, recipe: str) -> str:
    """The printed report: the row as `name: value` lines, then the notes."""
    lines = [f"throughput of {recipe} on {result.world_size} x {result.device}"]
    for key, value in result_row(result).items():
        lines.append(f"  {key:>22}: {value:.4g}" if isinstance(value, float) else f"  {key:>22}: {value}")
    lines += [f"  {note}" for note in result_notes(result, recipe)]
    return "\n".join(lines) + "\n"
