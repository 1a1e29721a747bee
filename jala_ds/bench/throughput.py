"""``jala bench throughput``: real training steps of a recipe, timed phase by phase, on every rank.

    jala bench throughput --recipe tiny_cpu --steps 6 train.global_batch_size=2          # one CPU process
    torchrun --nproc_per_node 8 $(which jala) bench throughput --recipe pretrain_internvl3_2b --steps 20

The model, loader, engine and EMA come from the trainer's own set-up (``jala_ds.train.loop.build_training``),
and a step is the trainer's step: ``grad_accum_steps`` micro-batches of {batch, forward, backward, engine step},
then the EMA update. Each phase is timed with the device synchronised at its edges, so asynchronous GPU work
is charged to the phase that queued it and the phases add up to the step; as many steps again then run
synchronised only at both ends, the pace of the trainer itself (``free_running_step_seconds``). ZeRO-3's
collectives run inside forward (parameter gathers), backward (reduce-scatter) and the engine step; they are not
timed apart.
Nothing is checkpointed. ``throughput_report.py`` turns the result into the markdown, chart and MLflow run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PHASES = ("data", "forward", "backward", "step")
"""Parts of a step: waiting for the batch (and copying it over), forward, backward, optimiser step + EMA."""
PROFILED_STEPS = 2
"""Steps ``--profile`` records after the timed ones: one is enough for the table, two show step-to-step drift."""
OPTIMIZER_RANGE = "jala::optimizer_step"
"""Profiler range around the engine step and the EMA update: the kernels launched in it are the optimiser's."""
MATMUL_AND_ATTENTION_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_mm",
    "aten::_cudnn_attention_forward", "aten::_cudnn_attention_backward",
    "aten::_flash_attention_forward", "aten::_flash_attention_backward",
    "aten::_efficient_attention_forward", "aten::_efficient_attention_backward",
    "jala_kernels::chunk_attention", "jala_kernels::chunk_attention_backward"})
"""Operators whose kernels are bound by tensor-core arithmetic. The GPU's other kernel time (elementwise work,
norms, copies, the optimiser) is bound by memory bandwidth, and ``jala plan`` scales the two parts to another
card by different figures. Kernels torch.compile generates itself (FlexAttention, fused Triton matmuls) are
not matched and count with the rest."""


@dataclass(frozen=True)
class ThroughputResult:
    """Per-step averages over the measured steps (after warm-up), each rank's figures averaged over ranks."""

    device: str
    world_size: int
    micro_batch_size: int
    grad_accum_steps: int
    steps: int
    """Measured optimiser steps (warm-up steps excluded)."""
    warmup: int
    phase_seconds: dict[str, float]
    """Seconds per step in each of ``PHASES``."""
    step_seconds: float
    """Seconds per step, measured around the whole step."""
    samples_per_s_per_rank: float
    tokens_per_s_per_rank: float
    """Non-padding tokens of the language model per second."""
    flops_per_sample: float
    """Model training FLOPs of the recipe's average sample (``recipe_flops``)."""
    peak_flops: float | None
    """The card's dense bf16 peak FLOP/s; None on a CPU or an unknown card (then no MFU)."""
    peak_memory_gb: float
    """CUDA max allocated during the measured steps on a GPU, the process's peak resident set on a CPU (largest
    over ranks)."""
    free_running_step_seconds: float | None = None
    """Seconds per step over as many steps again, the device synchronised only before the first and after the
    last: the trainer's own pace, at which one phase's host work may overlap GPU work the phase before it left
    queued. The phase split and the rates come from the synchronised steps. None for results that predate it."""
    zero_stage: int | None = None
    """The ds_config's ZeRO stage. The host's time per step depends on it (ZeRO-3's per-module gathers), so a host
    floor measured under one stage does not carry to a plan of another."""
    compilations: int = 0
    """Graphs torch.compile compiled during the measured steps (``train.compile_blocks``), most over ranks: when
    not 0, compile time is inside the step times and ``--warmup`` was too short."""
    resident_memory_gb: float | None = None
    """CUDA memory allocated when the measured steps began (weights, gradients, optimiser state: what stays
    between steps), largest over ranks; ``peak_memory_gb`` minus this is the activations' peak. None on a CPU."""
    gpu_busy_seconds: float | None = None
    """Seconds per step the GPU's kernels ran, from the profiled steps (``--profile`` on a GPU; this rank's, the
    only figure that differs between ranks); well under ``step_seconds`` means the host set the pace. None when
    not profiled."""
    gpu_matmul_seconds: float | None = None
    """The part of ``gpu_busy_seconds`` in matrix multiplies and attention (``MATMUL_AND_ATTENTION_OPS``), whose
    speed follows a card's peak FLOP/s; the rest follows its memory bandwidth. None when not profiled."""
    gpu_optimizer_seconds: float | None = None
    """The part of ``gpu_busy_seconds`` launched by the optimiser step and the EMA update (``OPTIMIZER_RANGE``):
    work over this rank's shard of the parameters, which ZeRO shrinks as GPUs are added. None when not
    profiled."""

    @property
    def achieved_tflops_per_rank(self) -> float:
        return self.flops_per_sample * self.samples_per_s_per_rank / 1e12

    @property
    def mfu(self) -> float | None:
        return None if self.peak_flops is None else self.achieved_tflops_per_rank * 1e12 / self.peak_flops

    def epoch_hours(self, samples: int, gpus: int) -> float:
        """Hours for ``samples`` samples on ``gpus`` GPUs, each at the measured per-rank rate."""
        return samples / (gpus * self.samples_per_s_per_rank) / 3600


class PhaseClock:
    """Seconds per phase; the device is synchronised at each edge (``sync``) so that work is charged to the
    phase that launched it rather than to whichever later call happens to wait for it. ``timer`` reads the
    clock: wall time, or this process's CPU time where other tenants of a shared CPU would add noise."""

    def __init__(self, sync: Callable[[], None], timer: Callable[[], float] = time.perf_counter):
        self.sync = sync
        self.timer = timer
        self.reset()

    def reset(self) -> None:
        self.totals = dict.fromkeys(PHASES, 0.0)

    def now(self) -> float:
        self.sync()
        return self.timer()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = self.now()
        yield
        self.totals[name] += self.now() - started


def card_peak_flops(device_name: str, device: torch.device) -> float | None:
    """The detected card's dense bf16 peak (``cards.card``), None on a CPU or a card the table lacks."""
    from jala_ds.bench import cards

    if device.type != "cuda":
        return None
    try:
        return cards.card(device_name).bf16_tflops * 1e12
    except ValueError:
        return None


def measure_throughput(plan, steps: int, warmup: int, name_device: Callable[[], str],
                       profile_dir: str | Path | None = None,
                       timer: Callable[[], float] = time.perf_counter) -> ThroughputResult:
    """Run ``warmup + steps`` training steps of ``plan`` (a ``check_run`` result) and time the last ``steps``;
    with ``profile_dir``, then profile ``PROFILED_STEPS`` more (``profile_steps``).

    ``name_device`` names the accelerator (``benchmarks.report.device_name``); it is called once this rank's
    device is set, so that asking does not open a CUDA context on GPU 0 from every rank. ``timer`` is the clock
    of every phase (``PhaseClock``). Every rank runs this (it is collective); every rank gets the same result.
    """
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator
    from torch.profiler import record_function

    from jala_ds.bench.flops import recipe_flops
    from jala_ds.train.compiled_blocks import compilations
    from jala_ds.train.engine import init_distributed
    from jala_ds.train.loop import build_training, endless, optimizer_step, seed_everything
    from jala_ds.train.metrics import StepMetrics, peak_memory_gb

    cfg, train_cfg = plan.cfg, plan.cfg.train
    init_distributed()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device_name = name_device()
    seed_everything(train_cfg.seed)
    parts = build_training(plan, rank, world_size)
    engine, ema = parts.engine, parts.ema
    on_gpu = engine.device.type == "cuda"
    compute_dtype = torch.bfloat16 if train_cfg.dtype == "bf16" else torch.float32
    clock = PhaseClock(get_accelerator().synchronize, timer)
    window = StepMetrics(engine.device, losses=parts.losses, flops_per_sample=None, peak_flops=None)  # never read
    # step seconds, samples, tokens over the measured steps
    totals = torch.zeros(3, dtype=torch.float64)

    def counted(batches: Iterator[dict]) -> Iterator[dict]:
        for batch in batches:
            totals[1] += len(batch["sample_ids"])
            totals[2] += int((batch["doc_ids"] >= 0).sum())
            yield batch

    @contextlib.contextmanager
    def timed(phase: str) -> Iterator[None]:
        with clock.phase(phase), record_function(OPTIMIZER_RANGE) if phase == "step" else contextlib.nullcontext():
            yield

    batches = counted(endless(parts.loader))

    def step() -> None:
        """One optimiser step, the trainer's own, each phase on the clock."""
        optimizer_step(engine, ema, batches, window, train_cfg.grad_accum_steps, compute_dtype, phase=timed)

    for index in range(warmup + steps):
        if index == warmup:
            clock.reset()
            totals.zero_()
            compiled_before = compilations()
            if on_gpu:  # what stays between steps, and a peak of the measured steps only
                resident = torch.cuda.memory_allocated(engine.device) / 1e9
                torch.cuda.reset_peak_memory_stats(engine.device)
        started = clock.now()
        step()
        totals[0] += clock.now() - started
    sums = [clock.totals[name] for name in PHASES] + totals.tolist()
    sums.append(free_running(step, steps, clock))
    # Average over ranks: one all-reduce of every rank's sums (on the engine's device, as NCCL requires).
    summed = torch.tensor(sums, dtype=torch.float64, device=engine.device)
    dist.all_reduce(summed)
    most = torch.tensor([peak_memory_gb(engine.device), compilations() - compiled_before,
                         resident if on_gpu else 0.0], dtype=torch.float64, device=engine.device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    *phase_totals, step_total, samples, tokens, free_total = (value / world_size for value in summed.tolist())
    result = ThroughputResult(
        device=device_name, world_size=world_size, micro_batch_size=train_cfg.micro_batch_size,
        grad_accum_steps=train_cfg.grad_accum_steps, steps=steps, warmup=warmup,
        phase_seconds={name: total / steps for name, total in zip(PHASES, phase_totals)},
        step_seconds=step_total / steps, free_running_step_seconds=free_total / steps,
        samples_per_s_per_rank=samples / step_total,
        tokens_per_s_per_rank=tokens / step_total, flops_per_sample=recipe_flops(cfg).per_sample,
        peak_flops=card_peak_flops(device_name, engine.device), peak_memory_gb=most[0].item(),
        zero_stage=engine.zero_optimization_stage(), compilations=int(most[1].item()),
        resident_memory_gb=most[2].item() if on_gpu else None)
    if profile_dir is not None:  # after the timed steps, so the profiler's overhead never enters the figures
        log.info("measured %.1f ms/step, %.2f samples/s per rank; profiling %d more steps",
                 result.step_seconds * 1e3, result.samples_per_s_per_rank, PROFILED_STEPS)
        busy, matmul, optimizer = profile_steps(step, PROFILED_STEPS, Path(profile_dir), rank, engine.device,
                                                clock.now)
        result = dataclasses.replace(result, gpu_busy_seconds=busy, gpu_matmul_seconds=matmul,
                                     gpu_optimizer_seconds=optimizer)
    return result


def free_running(step: Callable[[], None], count: int, clock: PhaseClock) -> float:
    """Seconds for ``count`` calls of ``step`` with the device synchronised only around all of them, as the
    trainer runs (``clock``'s phases still count, unsynchronised, and are not read)."""
    started = clock.now()
    sync, clock.sync = clock.sync, lambda: None
    try:
        for _ in range(count):
            step()
    finally:
        clock.sync = sync
    return clock.now() - started


def profile_steps(step: Callable[[], None], count: int, out_dir: Path, rank: int, device: torch.device,
                  now: Callable[[], float]) -> tuple[float | None, float | None, float | None]:
    """Run ``step`` ``count`` times under ``torch.profiler`` and write this rank's Chrome trace
    (``trace_rank<r>.json.gz``, for Perfetto or chrome://tracing) and ``top_ops_rank<r>.txt``: the time the GPU
    was busy per step against the wall time (much less means the host, not the GPU, sets the pace), then the 60
    costliest operators by device time (on a GPU), the 30 costliest by host time, then the 80 costliest (operator, input
    shapes) pairs, which tell the model's work from ZeRO's (a copy of a weight's shape is ZeRO moving a
    parameter or gradient; one of an activation's shape is the model's). ``now`` reads a synchronised clock. Returns
    the GPU's busy seconds per step, the part of them in matrix multiplies and attention and the part launched
    inside ``OPTIMIZER_RANGE`` (None, None, None on a CPU)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    # Recording shapes costs host time in these steps only; the kernels' busy time does not change.
    with profile(activities=activities, record_shapes=True) as prof:
        started = now()
        for _ in range(count):
            step()
        wall_ms = (now() - started) * 1e3 / count
    out_dir.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out_dir / f"trace_rank{rank}.json.gz"))
    operators = prof.key_averages()
    summary = f"per step: wall {wall_ms:.1f} ms"
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by=sort_by, row_limit=80)
    tables = [operators.table(sort_by="self_cpu_time_total", row_limit=30), by_shape]
    if device.type != "cuda":
        (out_dir / f"top_ops_rank{rank}.txt").write_text("\n".join([summary, *tables]) + "\n")
        return None, None, None
    # Kernels are the device-side events; the operators that launched them repeat their time, so skip those.
    busy_ms = sum(event.self_device_time_total for event in operators
                  if event.device_type != DeviceType.CPU and not event.is_user_annotation) / count / 1e3
    # An operator's self device time is that of the kernels it launched itself, so nested operators never
    # count twice.
    matmul_ms = sum(event.self_device_time_total for event in operators
                    if event.device_type == DeviceType.CPU and event.key in MATMUL_AND_ATTENTION_OPS) / count / 1e3
    # A range's device time holds the kernels of every operator inside it (the host-side event; the profiler
    # also records a device-side copy of each range, spanning idle gaps, which is not used).
    optimizer_ms = sum(event.device_time_total for event in prof.events()
                       if event.name == OPTIMIZER_RANGE and event.device_type == DeviceType.CPU) / count / 1e3
    summary += (f", GPU busy {busy_ms:.1f} ms ({busy_ms / wall_ms:.0%}; kernels on concurrent streams count twice), "
                f"of which matrix multiplies and attention {matmul_ms:.1f} ms, the optimiser step {optimizer_ms:.1f} ms")
    tables.insert(0, operators.table(sort_by="self_device_time_total", row_limit=60))
    (out_dir / f"top_ops_rank{rank}.txt").write_text("\n".join([summary, *tables]) + "\n")
    return busy_ms / 1e3, matmul_ms / 1e3, optimizer_ms / 1e3
