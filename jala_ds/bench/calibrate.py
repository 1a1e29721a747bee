"""The compute efficiency the planner uses: given (``--mfu``), measured (a throughput result), or assumed.

A throughput result is the markdown ``benchmarks/report.write_results`` writes: a ``- device: NAME`` line and a
table. A row's MFU is recomputed from its ``samples_per_s`` (or ``samples/s``) column with this package's FLOP
count, on ``gpus`` cards (1 when there is no such column) of the named device, so plan and measurement use one
count; a table without throughput must have an ``mfu`` column (a fraction, or a percentage with ``%``). The best
row wins: it is the configuration one would run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from jala_ds.bench.flops import mfu
from jala_ds.bench.plan import DEFAULT_MFU

RESULTS_GLOB = "*throughput*.md"
"""Names of the throughput benchmark's result files (``<date>_throughput_<device>.md``)."""


@dataclass(frozen=True)
class Calibration:
    """An MFU figure and where it came from, for the planner's output."""

    mfu: float
    source: str


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


def read_throughput_result(path: str | Path, flops_per_sample: float) -> Calibration:
    """The best MFU in the throughput result at ``path`` (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--calibrate {path}: no such file; pass a throughput result from benchmarks/results/")
    lines = path.read_text().splitlines()
    device = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("- device:")), None)
    best: tuple[float, str] | None = None
    for row in _table(lines):
        rate = _number(row.get("samples_per_s", ""))
        gpus = int(_number(row.get("gpus", "")) or 1)
        if rate is not None and device is not None:
            value, how = mfu(flops_per_sample, rate, gpus, device), f"{rate:g} samples/s on {gpus} x {device}"
        elif (given := _number(row.get("mfu", ""))) is not None:
            value, how = (given / 100 if given > 1 else given), "its mfu column"
        else:
            continue
        if best is None or value > best[0]:
            best = (value, how)
    if best is None:
        raise ValueError(f"{path}: no row with samples_per_s (and a '- device:' line) or mfu: pass a result of "
                         "the throughput benchmark, or give --mfu")
    return Calibration(best[0], f"measured, {path.name}: {best[1]}")


def latest_result(results_dir: str | Path) -> Path | None:
    """The newest throughput result in ``results_dir`` (names start with the date), if any."""
    found = sorted(Path(results_dir).glob(RESULTS_GLOB))
    return found[-1] if found else None


def calibration(flops_per_sample: float, given_mfu: float | None = None, result: str | Path | None = None,
                results_dir: str | Path = "benchmarks/results") -> Calibration:
    """``given_mfu`` if set, else the result file named, else the newest one in ``results_dir``, else the default."""
    if given_mfu is not None:
        if not 0 < given_mfu <= 1:
            raise ValueError(f"--mfu {given_mfu}: give a fraction in (0, 1], e.g. 0.45")
        return Calibration(given_mfu, "given with --mfu")
    if result is not None:
        return read_throughput_result(result, flops_per_sample)
    found = latest_result(results_dir)
    if found is None:
        return Calibration(DEFAULT_MFU, f"assumed: no --mfu, --calibrate or {results_dir}/{RESULTS_GLOB}")
    try:
        return read_throughput_result(found, flops_per_sample)
    except ValueError as err:  # e.g. a CPU run's result: it cannot calibrate a GPU plan, so it is skipped, visibly
        return Calibration(DEFAULT_MFU, f"assumed: {found} was not usable ({err})")
