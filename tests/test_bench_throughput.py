"""``jala bench throughput`` on the tiny CPU recipe: real ZeRO-3 steps in one process, a result file whose
columns are all there and positive, phases that add up to the measured step, and a table ``jala plan`` reads.

The command runs in a subprocess started outside the checkout (as the console script would be), with its
MLflow store in tmp_path."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jala_ds.bench.calibrate import read_throughput_result
from jala_ds.bench.commands import COMPILED_WARMUP, EAGER_WARMUP, default_warmup
from jala_ds.bench.flops import mfu, recipe_flops
from jala_ds.bench.tables import markdown_table
from jala_ds.bench.throughput import OPTIMIZER_RANGE, ThroughputResult
from jala_ds.bench.throughput_report import result_notes
from jala_ds.bench.throughput_report import result_row as result_row_of
from jala_ds.config import load_config

JALA = str(Path(sys.executable).with_name("jala"))
TIME_COLUMNS = ("data wait ms", "forward ms", "backward ms", "optimizer step ms")
POSITIVE_COLUMNS = ("gpus", "micro batch", "grad accum", "step ms", "free-running step ms", *TIME_COLUMNS, "samples/s",
                    "samples/s per rank", "tokens/s per rank", "GFLOP per sample", "TFLOP/s per rank",
                    "peak memory GB", "epoch h on 8 GPUs")


@pytest.fixture(scope="module")
def smoke_result(tiny_corpus, tmp_path_factory):
    """The markdown and printed output of ``jala bench throughput --recipe tiny_cpu --steps 6``."""
    tmp = tmp_path_factory.mktemp("throughput")
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}")
    done = subprocess.run([JALA, "bench", "throughput", "--recipe", "tiny_cpu", "--steps", "6", "--warmup", "2",
                           "--out", str(tmp / "results"), "--profile", str(tmp / "profile"), "train.global_batch_size=2",
                           f"data.mds_dir={tiny_corpus.mds}"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = sorted((tmp / "results").glob("*_throughput_*.md"))
    assert len(results) == 1, list((tmp / "results").iterdir())
    return results[0], done.stdout


def result_row(path: Path) -> dict[str, str]:
    """The result's one table row: column name as written -> cell text."""
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in path.read_text().splitlines()
             if line.startswith("|")]
    assert len(table) == 3, table  # header, rule, one row
    return dict(zip(table[0], table[2]))


def number(row: dict[str, str], column: str) -> float:
    return float(row[column])


def test_result_holds_every_column_with_a_positive_number(smoke_result):
    path, _ = smoke_result
    row = result_row(path)
    for column in POSITIVE_COLUMNS:
        assert number(row, column) > 0, f"{column}: {row[column]!r}"
    assert row["mfu"] == "n/a"  # a CPU has no bf16 tensor-core peak
    assert number(row, "gpus") == 1 and number(row, "micro batch") == 2
    assert number(row, "samples/s") == pytest.approx(number(row, "samples/s per rank"), rel=1e-3)
    assert path.with_suffix(".png").is_file()
    assert "\n- ZeRO stage: 3 (" in path.read_text()  # tiny_cpu's cpu.json: the planner matches host floors by it


def test_step_time_parts_add_up_to_the_measured_step(smoke_result):
    path, _ = smoke_result
    row = result_row(path)
    parts = sum(number(row, column) for column in TIME_COLUMNS)
    # Only the clock reads and the loop itself lie between the phases.
    assert parts == pytest.approx(number(row, "step ms"), rel=0.05)


def test_rates_and_projection_follow_from_the_step_time(smoke_result):
    path, stdout = smoke_result
    row = result_row(path)
    samples_per_step = number(row, "micro batch") * number(row, "grad accum")
    rate = number(row, "samples/s per rank")
    assert rate == pytest.approx(samples_per_step / (number(row, "step ms") / 1e3), rel=0.01)
    flops = recipe_flops(load_config("tiny_cpu")).per_sample
    assert number(row, "GFLOP per sample") == pytest.approx(flops / 1e9, rel=1e-3)
    assert number(row, "TFLOP/s per rank") == pytest.approx(flops * rate / 1e12, rel=0.01)
    assert number(row, "epoch h on 8 GPUs") == pytest.approx(7.5e6 / (8 * rate) / 3600, rel=0.01)
    assert "paper: 68 h on 8 x A800" in stdout and "target: 12 h" in stdout


def test_plan_calibrates_from_the_table_on_a_gpu_and_refuses_a_cpu(smoke_result, tmp_path):
    path, _ = smoke_result
    with pytest.raises(ValueError, match="unknown GPU 'CPU"):
        read_throughput_result(path, flops_per_sample=1e12)
    # The same table under a GPU's device line: the planner's MFU is the samples/s column on `gpus` such cards.
    on_gpu = tmp_path / "2026-01-01_throughput_h100.md"
    on_gpu.write_text(re.sub(r"^- device: .*$", "- device: NVIDIA H100 80GB HBM3", path.read_text(), flags=re.M))
    row = result_row(path)
    calibration = read_throughput_result(on_gpu, flops_per_sample=1e12)
    assert calibration.mfu == pytest.approx(mfu(1e12, number(row, "samples/s"), int(number(row, "gpus")), "h100"))


def test_bad_step_counts_fail_in_one_line():
    done = subprocess.run([JALA, "bench", "throughput", "--recipe", "tiny_cpu", "--steps", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--steps 0" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_profile_writes_a_trace_and_the_costliest_operators(smoke_result):
    """``--profile``: steps after the timed ones, recorded by torch.profiler, one trace and table per rank."""
    path, _ = smoke_result
    profile = path.parent.parent / "profile"
    trace = json.loads(gzip.decompress((profile / "trace_rank0.json.gz").read_bytes()))
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert any(name.startswith("aten::mm") or name.startswith("aten::addmm") for name in names)
    assert OPTIMIZER_RANGE in names  # the range whose kernels the GPU optimizer ms column sums
    summary, table = (profile / "top_ops_rank0.txt").read_text().split("\n", 1)
    assert re.fullmatch(r"per step: wall \d+\.\d ms", summary)
    assert "Self CPU" in table and "aten::" in table
    assert "Input Shapes" in table  # the (operator, shapes) table that tells the model's copies from ZeRO's


def made_result(**changes) -> ThroughputResult:
    """A result as ``measure_throughput`` returns it, without running any step."""
    fields = dict(device="CPU", world_size=1, micro_batch_size=2, grad_accum_steps=1, steps=3, warmup=1,
                  phase_seconds=dict.fromkeys(("data", "forward", "backward", "step"), 0.1), step_seconds=0.4,
                  samples_per_s_per_rank=5.0, tokens_per_s_per_rank=500.0, flops_per_sample=1e9, peak_flops=None,
                  peak_memory_gb=1.0)
    return ThroughputResult(**{**fields, **changes})


def test_the_warm_up_holds_the_compilations_when_the_recipe_compiles_its_layers():
    assert default_warmup("pretrain_internvl3_2b", []) == COMPILED_WARMUP > EAGER_WARMUP
    assert default_warmup("pretrain_internvl3_2b", ["train.compile_blocks=null"]) == EAGER_WARMUP
    assert default_warmup("tiny_cpu", []) == EAGER_WARMUP


def test_graphs_compiled_while_timing_are_reported_as_a_warning():
    assert not any("compiled" in note for note in result_notes(made_result(compilations=0), "tiny_cpu"))
    warning = [note for note in result_notes(made_result(compilations=2), "tiny_cpu") if "compiled 2 graph(s)" in note]
    assert len(warning) == 1 and "--warmup" in warning[0]


def test_a_profiled_gpu_result_splits_into_compute_mfu_host_floor_and_activations_for_the_planner(tmp_path):
    """The H200 figures: 16 samples in a 944 ms step whose kernels ran 340.4 ms. The GPU-busy column turns into
    the compute MFU (FLOPs over busy time) and, the GPU being idle most of the step, a host floor of the step,
    its data, forward and backward per micro-step, its engine step per optimiser step; peak less resident memory,
    into activations per sample."""
    phases = {"data": 0.002, "forward": 0.3, "backward": 0.5, "step": 0.142}
    measured = made_result(device="NVIDIA H200", micro_batch_size=16, step_seconds=0.944, phase_seconds=phases,
                           samples_per_s_per_rank=16 / 0.944, flops_per_sample=7.1e12, peak_flops=989e12)
    assert "GPU busy ms" not in result_row_of(measured) and not any("busy" in n for n in result_notes(measured, "r"))
    profiled = dataclasses.replace(measured, gpu_busy_seconds=0.3404, gpu_matmul_seconds=0.1687, peak_memory_gb=75.9,
                                   resident_memory_gb=38.7)
    assert result_row_of(profiled)["GPU busy ms"] == pytest.approx(340.4)
    assert result_row_of(profiled)["GPU matmul+attention ms"] == pytest.approx(168.7)
    assert sum("GPU busy ms" in note for note in result_notes(profiled, "r")) == 1
    path = tmp_path / "2026-11-26_throughput_nvidia-h200.md"
    path.write_text(f"- device: {profiled.device}\n\n{markdown_table([result_row_of(profiled)])}\n")
    calibration = read_throughput_result(path, flops_per_sample=7.1e12)
    assert calibration.mfu == pytest.approx(16 * 7.1e12 / (0.3404 * 989e12), rel=1e-3)
    assert calibration.host_s == pytest.approx(0.802) and calibration.host_step_s == pytest.approx(0.142)
    assert "host-bound" in calibration.source
    assert calibration.activation_gb == pytest.approx((75.9 - 38.7) / 16)  # activations per sample
    assert calibration.bandwidth_share == pytest.approx(1 - 168.7 / 340.4)  # the rest waits on memory
    # Given the trained parameters, the optimiser step over them leaves the kernel time as the plan prices it
    # (30 B per parameter at 80 % of the H200's 4.8 TB/s), from the memory-bound part.
    without_optimizer = read_throughput_result(path, flops_per_sample=7.1e12, trained_params=2.14e9)
    optimizer_s = 2.14e9 * 30 / (4.8e12 * 0.8)
    assert without_optimizer.mfu == pytest.approx(16 * 7.1e12 / ((0.3404 - optimizer_s) * 989e12), rel=1e-3)
    assert without_optimizer.bandwidth_share == pytest.approx(1 - 168.7 / (340.4 - optimizer_s * 1e3))
    assert without_optimizer.host_s == calibration.host_s and "optimiser step" in without_optimizer.source
    # A measured optimiser step (its column) replaces the priced one.
    measured = dataclasses.replace(profiled, gpu_optimizer_seconds=0.045)
    assert result_row_of(measured)["GPU optimizer ms"] == pytest.approx(45.0)
    path.write_text(f"- device: {measured.device}\n\n{markdown_table([result_row_of(measured)])}\n")
    from_column = read_throughput_result(path, flops_per_sample=7.1e12, trained_params=2.14e9)
    assert from_column.mfu == pytest.approx(16 * 7.1e12 / ((0.3404 - 0.045) * 989e12), rel=1e-3)
    assert "45.0 the optimiser step, measured" in from_column.source
    # A GPU busy for (nearly) the whole step set the pace itself: no host floor.
    busy = dataclasses.replace(profiled, gpu_busy_seconds=0.93)
    path.write_text(f"- device: {busy.device}\n\n{markdown_table([result_row_of(busy)])}\n")
    assert read_throughput_result(path, flops_per_sample=7.1e12).host_s == 0.0
