"""The compute efficiency and host floor the planner uses: given (``--mfu``, ``--host-ms``), measured (a throughput
result), or assumed.

A throughput result is the markdown ``benchmarks/report.write_results`` writes: a ``- device: NAME`` line and a
table. A row's MFU is recomputed from its ``samples_per_s`` (or ``samples/s``) column with this package's FLOP
count, on ``gpus`` cards (1 when there is no such column) of the named device, so plan and measurement use one
count; a table without throughput must have an ``mfu`` column (a fraction, or a percentage with ``%``). The best
row wins: it is the configuration one would run.

A row measured under the profiler (``jala bench throughput --profile``) also has ``GPU busy ms``: the time the
GPU's kernels ran per step. It splits the step in two. The compute MFU is then the model FLOPs over the busy time,
which scales with the card; and when the GPU was busy for less than ``HOST_BOUND_BELOW`` of the step, the host set
the pace, so the step's time becomes the host floor, which a faster card does not shorten. With the phase columns
(``data wait ms``, ``forward ms``, ``backward ms``, ``optimizer step ms``) the floor splits into a part per
micro-step (data, forward, backward) and one per optimiser step, which gradient accumulation does not repeat;
without them the step's time counts per micro-step. Without ``GPU busy ms`` the whole step counts as compute, as
if the GPU had set the pace (no floor).

Its ``GPU matmul+attention ms`` column splits the busy time again. Matrix multiplies and attention run at a
card's tensor-core speed; the rest (elementwise work, norms, copies, the optimiser) waits on memory. Cards differ
in the ratio of the two (an A800 has a third of an H200's peak FLOP/s but 42 % of its memory bandwidth), so
``Calibration.mfu_on`` scales each part by its own figure when the plan is for another card.

The busy time also holds the measuring GPUs' optimiser step over their shards of the parameters, which the plan
prices itself for the target's shards (``plan.estimate_step``): left in, a one-GPU result would bring the whole
model's optimiser step into every GPU's compute time. So it leaves the busy time's memory-bound part: as
measured, when the row has ``GPU optimizer ms`` (the kernels launched by the engine step and the EMA update:
Adam, gradient norms, the partitions' casts and copies); else, given the trained parameter count, priced as the
plan prices it (``ADAM_BYTES_PER_PARAM`` at ``HBM_EFFICIENCY`` of the measuring card's bandwidth).

A row with ``peak memory GB`` and ``resident memory GB`` (what stayed allocated between steps) gives the
activations' size per sample: their difference over the micro-batch.

A ``- ZeRO stage: N`` line says under which stage the result ran. The host's time per step depends on it (ZeRO-3
gathers and releases every module's parameters in Python, ZeRO-2 does not), so a plan for another stage leaves
that result's host floor out and says so.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from jala_ds.bench.cards import Card, card
from jala_ds.bench.flops import mfu
from jala_ds.bench.plan import ADAM_BYTES_PER_PARAM, DEFAULT_MFU, HBM_EFFICIENCY

RESULTS_GLOB = "*throughput*.md"
"""Names of the throughput benchmark's result files (``<date>_throughput_<device>.md``)."""
HOST_BOUND_BELOW = 0.9
"""A measured step whose GPU was busy for less than this fraction of it is host-bound: the GPU waited for the host."""


@dataclass(frozen=True)
class Calibration:
    """A compute MFU and a host floor, and where they came from, for the planner's output."""

    mfu: float
    source: str
    host_s: float = 0.0
    """Host seconds per micro-step, a floor under the compute time on any card; 0 when not measured or given."""
    host_step_s: float = 0.0
    """Host seconds per optimiser step on top of the micro-steps' (the engine's step); 0 when not measured."""
    activation_gb: float | None = None
    """Activation memory per sample of a micro-batch, GB; None when not measured or given."""
    measured_on: Card | None = None
    """The card the compute MFU was measured on; None when given or assumed (then it holds on every card)."""
    bandwidth_share: float = 0.0
    """The share of the measured GPU time outside matrix multiplies and attention: bound by memory bandwidth."""
    zero_stage: int | None = None
    """The ZeRO stage of the measured run, when the result names it; its host floor holds for that stage only."""
    host_note: str | None = None
    """Why a measured host floor was left out, when it was."""

    def mfu_on(self, target: Card) -> float:
        """The compute MFU on ``target``: the measured kernel time split into its tensor-core part, which scales
        with the cards' peak FLOP/s as MFU assumes, and its memory-bound part, which scales with their HBM
        bandwidth instead."""
        if self.measured_on is None or self.bandwidth_share == 0:
            return self.mfu
        ref = self.measured_on
        memory_slowdown = (ref.hbm_tb_s / target.hbm_tb_s) * (target.bf16_tflops / ref.bf16_tflops)
        return self.mfu / (1 - self.bandwidth_share + self.bandwidth_share * memory_slowdown)


def _column(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower().replace("/s", "_per_s")).strip("_")


def _number(cell: str) -> float | None:
    match = re.search(r"-?\d+(\.\d+)?([eE]-?\d+)?", cell)
    if match is None:
        return None
    value = float(match.group(0))
    return value / 100 if "%" in cell else value


def _table(lines: list[str]) -> list[dict[str, str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines
            if line.lstrip().startswith("|")]
    if len(rows) < 3:
        return []
    header = [_column(cell) for cell in rows[0]]
    return [dict(zip(header, row)) for row in rows[2:]]


def read_throughput_result(path: str | Path, flops_per_sample: float, trained_params: float = 0.0) -> Calibration:
    """The best MFU in the throughput result at ``path`` (see the module docstring for the format); with
    ``trained_params``, a profiled row's kernel time leaves out the optimiser step the plan prices itself."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--calibrate {path}: no such file; pass a throughput result from benchmarks/results/")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"--calibrate {path}: not a text file; pass a throughput result from benchmarks/results/") \
            from None
    device = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("- device:")), None)
    best: tuple[float, Calibration, dict[str, str]] | None = None
    for row in _table(lines):
        rate = _number(row.get("samples_per_s", ""))
        gpus = int(_number(row.get("gpus", "")) or 1)
        if rate is not None and device is not None:
            value = mfu(flops_per_sample, rate, gpus, _measuring_card(path, device))
            try:
                found = _split_by_busy_time(row, flops_per_sample, device, value, trained_params / gpus,
                                            f"measured, {path.name}: {rate:g} samples/s on {gpus} x {device}")
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
        elif (given := _number(row.get("mfu", ""))) is not None:
            value = given / 100 if given > 1 else given
            found = Calibration(value, f"measured, {path.name}: its mfu column")
        else:
            continue
        if best is None or value > best[0]:
            best = (value, found, row)
    if best is None:
        raise ValueError(f"{path}: no row with samples_per_s (and a '- device:' line) or mfu: pass a result of "
                         "the throughput benchmark, or give --mfu")
    _, found, row = best
    if not 0 < found.mfu <= 1:
        raise ValueError(f"{path}: its best row gives a compute MFU of {found.mfu:.1%}, outside (0, 100 %]: pass a "
                         "result of this recipe's throughput benchmark, or give --mfu")
    stages = [_number(line.split(":", 1)[1]) for line in lines if line.startswith("- ZeRO stage:")]
    if stages and stages[0] not in (2, 3):
        raise ValueError(f"{path}: its '- ZeRO stage:' line names no stage 2 or 3: fix the line, or give --mfu")
    return dataclasses.replace(found, activation_gb=_activation_gb_per_sample(row),
                               zero_stage=int(stages[0]) if stages else None)


def _measuring_card(path: Path, device: str) -> Card:
    try:
        return card(device)
    except ValueError as err:
        raise ValueError(f"{path}: its '- device: {device}' line: {err}") from None


def _activation_gb_per_sample(row: dict[str, str]) -> float | None:
    peak, resident = _number(row.get("peak_memory_gb", "")), _number(row.get("resident_memory_gb", ""))
    micro = _number(row.get("micro_batch", "")) or 1
    return None if peak is None or resident is None else max(peak - resident, 0.0) / micro


def _split_by_busy_time(row: dict[str, str], flops_per_sample: float, device: str, step_mfu: float,
                        shard_params: float, source: str) -> Calibration:
    """The row's compute MFU and host floor from its ``GPU busy ms`` (see the module docstring); the end-to-end
    ``step_mfu`` and no floor without it. The busy time holds the measuring GPU's optimiser step over its shard
    of ``shard_params``, which ZeRO shrinks with the GPU count and the plan prices per target shard
    (``plan.estimate_step``): priced the same way here, it leaves the compute time, from its memory-bound part."""
    busy_ms, step_ms = _number(row.get("gpu_busy_ms", "")), _number(row.get("step_ms", ""))
    if busy_ms is None or step_ms is None or busy_ms <= 0:
        return Calibration(step_mfu, source)
    accum = int(_number(row.get("grad_accum", "")) or 1)
    samples_per_step = (_number(row.get("micro_batch", "")) or 1) * accum
    matmul_ms = _number(row.get("gpu_matmul_attention_ms", ""))
    measured_optimizer_ms = _number(row.get("gpu_optimizer_ms", ""))
    priced_optimizer_ms = shard_params * ADAM_BYTES_PER_PARAM / (card(device).hbm_tb_s * 1e12 * HBM_EFFICIENCY) * 1e3
    optimizer_ms = min(priced_optimizer_ms if measured_optimizer_ms is None else measured_optimizer_ms,
                       busy_ms - (matmul_ms or 0.0))
    compute_ms = busy_ms - optimizer_ms
    if compute_ms <= 0:
        raise ValueError(f"a row's GPU busy time ({busy_ms:g} ms per step) is no longer than the optimiser step "
                         f"priced for the planned model ({optimizer_ms:.1f} ms), so it measured a smaller model: pass "
                         "a result of this recipe, or give --mfu")
    kernel_mfu = mfu(flops_per_sample, samples_per_step / (compute_ms / 1e3), 1, device)
    parts = [f"{matmul_ms:g} in matrix multiplies and attention"] if matmul_ms is not None else []
    if optimizer_ms > 0:
        how = "priced as the plan prices it" if measured_optimizer_ms is None else "measured"
        parts.append(f"{optimizer_ms:.1f} the optimiser step, {how} and left out")
    source += f", GPU busy {busy_ms:g} of {step_ms:g} ms per step" + (f" ({'; '.join(parts)})" if parts else "")
    split = {}
    if matmul_ms is not None:
        split = {"measured_on": card(device), "bandwidth_share": min(max(1 - matmul_ms / compute_ms, 0.0), 1.0)}
    if busy_ms >= HOST_BOUND_BELOW * step_ms:
        return Calibration(kernel_mfu, source, **split)
    phases = [_number(row.get(name, "")) for name in ("data_wait_ms", "forward_ms", "backward_ms", "optimizer_step_ms")]
    if None in phases:
        return Calibration(kernel_mfu, source + ", host-bound", host_s=step_ms / 1e3 / accum, **split)
    *micro_step_phases, optimizer_step = phases
    return Calibration(kernel_mfu, source + ", host-bound", host_s=sum(micro_step_phases) / 1e3 / accum,
                       host_step_s=optimizer_step / 1e3, **split)


def results_newest_first(results_dir: str | Path) -> list[Path]:
    """The throughput results in ``results_dir``, newest first (names start with the date)."""
    return sorted(Path(results_dir).glob(RESULTS_GLOB), reverse=True)


def calibration(flops_per_sample: float, given_mfu: float | None = None, result: str | Path | None = None,
                results_dir: str | Path = "benchmarks/results", given_host_ms: float | None = None,
                given_activation_gb: float | None = None, trained_params: float = 0.0,
                zero_stage: int | None = None) -> Calibration:
    """``given_mfu`` if set, else the result file named, else the newest one in ``results_dir``, else the default;
    ``given_host_ms`` and ``given_activation_gb`` replace whatever host floor and activation size that gives.
    ``trained_params`` (the planned model's) takes the optimiser step out of a profiled result's kernel time; a
    measured host floor is left out when the result ran under another ZeRO stage than ``zero_stage``."""
    for flag, value in (("--host-ms", given_host_ms), ("--activation-gb", given_activation_gb)):
        if value is not None and not value >= 0:   # nan too
            raise ValueError(f"{flag} {value}: give 0 or more")
    found = _compute_calibration(flops_per_sample, given_mfu, result, results_dir, trained_params)
    if found.host_s > 0 and None not in (found.zero_stage, zero_stage) and found.zero_stage != zero_stage:
        found = dataclasses.replace(
            found, host_s=0.0, host_step_s=0.0,
            host_note=(f"the result's host floor ({host_floor_text(found)}) was measured under "
                       f"ZeRO-{found.zero_stage} and this plan is ZeRO-{zero_stage}, whose host time differs: left "
                       f"out (give --host-ms, or --calibrate a ZeRO-{zero_stage} result)"))
    if given_host_ms is not None:
        found = dataclasses.replace(found, source=f"{found.source}; host floor given with --host-ms",
                                    host_s=given_host_ms / 1e3, host_step_s=0.0, host_note=None)
    if given_activation_gb is not None:
        found = dataclasses.replace(found, activation_gb=given_activation_gb)
    return found


def host_floor_text(found: Calibration) -> str:
    """The host floor in words: per micro-step, and per optimiser step when measured apart."""
    text = f"{found.host_s * 1e3:.4g} ms per micro-step"
    return text + (f" plus {found.host_step_s * 1e3:.4g} ms per optimiser step" if found.host_step_s else "")


def _compute_calibration(flops_per_sample: float, given_mfu: float | None, result: str | Path | None,
                         results_dir: str | Path, trained_params: float) -> Calibration:
    if given_mfu is not None:
        if not 0 < given_mfu <= 1:
            raise ValueError(f"--mfu {given_mfu}: give a fraction in (0, 1], e.g. 0.45")
        return Calibration(given_mfu, "given with --mfu")
    if result is not None:
        return read_throughput_result(result, flops_per_sample, trained_params)
    skipped = []
    for found in results_newest_first(results_dir):
        try:
            calibrated = read_throughput_result(found, flops_per_sample, trained_params)
        except ValueError as err:  # e.g. a CPU run's result: it cannot calibrate a GPU plan; skipped, visibly
            skipped.append(f"{found.name} ({err})")
            continue
        if skipped:
            calibrated = dataclasses.replace(calibrated, source=f"{calibrated.source}; newer results not usable: "
                                                                 + "; ".join(skipped))
        return calibrated
    if skipped:
        return Calibration(DEFAULT_MFU, f"assumed: no usable result in {results_dir} ({'; '.join(skipped)})")
    return Calibration(DEFAULT_MFU, f"assumed: no --mfu, --calibrate or {results_dir}/{RESULTS_GLOB}")
