"""The scaling planner: monotone where it must be, network-blind inside a node, calibrated by measurements."""
from __future__ import annotations

import dataclasses
import itertools

import pytest

from jala_ds.bench import plan, plan_report
from jala_ds.bench.calibrate import calibration, read_throughput_result
from jala_ds.bench.cards import CARDS
from jala_ds.bench.dims import model_dims
from jala_ds.bench.flops import mfu, recipe_flops
from jala_ds.bench.plan_report import mfu_for_target
from jala_ds.cli import main
from jala_ds.config import load_config

COUNTS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


@pytest.fixture(scope="module")
def work():
    """The full recipe under ZeRO-3, whose gathers make communication grow with the GPU count."""
    cfg = load_config("pretrain_internvl3_2b", ["train.ds_config=ds_configs/zero3_bf16.json"])
    dims = model_dims(cfg)
    return plan.Workload.from_recipe(cfg, recipe_flops(cfg, dims=dims), dims)


@pytest.fixture
def a800():
    return plan.Cluster(CARDS["a800"], gpus_per_node=8, network_gb_s=100.0)


def test_weak_scaling_hours_fall_with_every_doubling(work, a800):
    rows = plan.scaling_table(work, a800, COUNTS, mfu=0.4)
    hours = [row.epoch_hours for row in rows]
    assert all(later < earlier for earlier, later in itertools.pairwise(hours))
    assert [row.global_batch for row in rows] == [16 * n for n in COUNTS]


def test_strong_scaling_hours_fall_until_communication_dominates(work, a800):
    rows = plan.scaling_table(work, a800, COUNTS, mfu=0.4, global_batch=128)
    assert [row.gpus for row in rows] == [1, 2, 4, 8, 16, 32, 64, 128]  # 256 and 512 cannot split 128 samples
    first = plan.comm_dominates_from(rows)
    assert first is not None and first.gpus > 8
    before = [row.epoch_hours for row in rows if row.gpus <= first.gpus]
    assert all(later < earlier for earlier, later in itertools.pairwise(before))
    assert all(row.comm_bound for row in rows if row.gpus >= first.gpus)
    assert rows[-1].epoch_hours > rows[-2].epoch_hours  # past the crossover more GPUs cost time


def test_network_bandwidth_matters_only_across_nodes(work, a800):
    slow = dataclasses.replace(a800, network_gb_s=25.0)
    for fast_row, slow_row in zip(plan.scaling_table(work, a800, COUNTS, 0.4),
                                  plan.scaling_table(work, slow, COUNTS, 0.4)):
        if fast_row.nodes == 1:
            assert slow_row == fast_row
        else:
            assert slow_row.comm_s > fast_row.comm_s and slow_row.epoch_hours > fast_row.epoch_hours


def test_a_ring_across_nodes_sends_n_minus_1_over_n_of_the_buffer_through_each_nodes_network(a800):
    """A flat ring's edge out of a node carries every shard but the next GPU's own, the node's own shards included:
    on 2 nodes of 8, 15/16 of the buffer, not the (nodes - 1) / nodes = 1/2 a hierarchical scheme would send."""
    slow = dataclasses.replace(a800, network_gb_s=10.0)  # the network sets the time, not NVLink
    nbytes = 4e9
    seconds = plan.collective_seconds(nbytes, 16, slow, calls=0)
    assert seconds == pytest.approx(15 / 16 * nbytes / (10e9 * plan.NETWORK_EFFICIENCY))


def test_one_gpu_pays_no_communication_and_mfu_agrees_with_flops(work, a800):
    single = plan.estimate_step(work, a800, 1, mfu=0.4, overlap=0.7)
    assert single.comm_s == 0.0 and single.exposed_comm_s == 0.0
    assert single.mfu == pytest.approx(0.4 * single.compute_s / single.step_s)
    for row in plan.scaling_table(work, a800, COUNTS, 0.4):
        assert row.mfu == pytest.approx(mfu(work.flops_per_sample, row.samples_per_s, row.gpus, "a800"))
        assert row.mfu <= 0.4


def test_overlap_hides_communication_up_to_the_compute_time(work, a800):
    none = plan.estimate_step(work, a800, 64, 0.4, overlap=0.0)
    full = plan.estimate_step(work, a800, 64, 0.4, overlap=1.0)
    assert none.exposed_comm_s == pytest.approx(none.comm_s)
    assert full.exposed_comm_s == pytest.approx(max(0.0, full.comm_s - full.compute_s))


def test_a_host_floor_paces_fast_cards_and_small_micro_batches(work, a800):
    """The H200's measured split: kernels at 33.8% MFU, 944 ms of host time per micro-step."""
    h100 = plan.Cluster(CARDS["h100"])
    single = plan.estimate_step(work, h100, 1, mfu=0.338, overlap=0.7, host_s=0.944)
    assert single.host_bound and single.compute_s == pytest.approx(0.944)
    assert not plan.estimate_step(work, h100, 1, mfu=0.338, overlap=0.7).host_bound
    # An A800's kernels take longer than the host: the floor changes nothing there.
    floored = plan.estimate_step(work, a800, 8, mfu=0.338, overlap=0.7, host_s=0.944)
    assert not floored.host_bound and floored == plan.estimate_step(work, a800, 8, 0.338, 0.7)
    # Strong scaling shrinks the micro-batch but not the host's time per micro-step: the epoch stops shortening.
    rows = plan.scaling_table(work, a800, [8, 16, 32, 64], 0.338, global_batch=128, host_s=0.944)
    assert [row.host_bound for row in rows] == [False, True, True, True]
    assert all(row.compute_s == pytest.approx(0.944) for row in rows[1:])
    assert min(row.epoch_hours for row in rows) > 58_594 * 0.944 / 3600


def test_memory_is_the_stages_state_plus_one_micro_batch_of_activations(work, a800):
    trained, frozen = work.params_trained, work.params_forward - work.params_trained
    zero2 = dataclasses.replace(work, zero_stage=2)
    assert work.state_gb(1) == pytest.approx((18 * trained + 2 * frozen) / 1e9)
    assert work.state_gb(8) == pytest.approx(work.state_gb(1) / 8)
    assert zero2.state_gb(8) == pytest.approx((16 * trained / 8 + 4 * trained + 2 * frozen) / 1e9)
    unknown = plan.estimate_step(work, a800, 8, 0.4, 0.7)
    assert unknown.memory_gb is None and unknown.row()["GB per GPU"] == f"{work.state_gb(8):.0f} + activations"
    known = plan.estimate_step(work, a800, 8, 0.4, 0.7, activation_gb=2.5)
    assert known.memory_gb == pytest.approx(work.state_gb(8) + 16 * 2.5)
    halved = plan.scaling_table(work, a800, [16], 0.4, global_batch=128, activation_gb=2.5)[0]
    assert halved.memory_gb == pytest.approx(work.state_gb(16) + 8 * 2.5)


def test_zero2_gathers_no_parameters_per_pass_only_the_updated_ones_per_step(work, a800):
    zero2 = dataclasses.replace(work, zero_stage=2)
    assert plan.step_end_comm_seconds(work, 8, a800) == 0.0
    assert plan.micro_step_comm_seconds(zero2, 8, a800) < plan.micro_step_comm_seconds(work, 8, a800)
    gather = plan.step_end_comm_seconds(zero2, 8, a800)
    assert gather > 0 and plan.step_end_comm_seconds(zero2, 1, a800) == 0.0
    step = plan.estimate_step(zero2, a800, 8, 0.4, overlap=1.0)
    assert step.exposed_comm_s == pytest.approx(gather)  # the step-end gather has nothing to hide behind


def test_a_ds_config_of_another_stage_is_refused(tmp_path):
    config = tmp_path / "zero1.json"
    config.write_text('{"zero_optimization": {"stage": 1}}')
    cfg = load_config("pretrain_internvl3_2b", [f"train.ds_config={config}"])
    dims = model_dims(cfg)
    with pytest.raises(ValueError, match="ZeRO stage 1: jala plan models stages 2 and 3"):
        plan.Workload.from_recipe(cfg, recipe_flops(cfg, dims=dims), dims)
    shipped = load_config("pretrain_internvl3_2b", ["train.ds_config=ds_configs/zero2.json"])
    assert plan.Workload.from_recipe(shipped, recipe_flops(shipped, dims=dims), dims).zero_stage == 2


def test_paper_and_target_mfu(work, a800):
    assert plan.mfu_for_hours(work, 68.0, 8, CARDS["a800"]) == pytest.approx(0.087, abs=1e-3)
    needed = mfu_for_target(work, a800, 8, 12.0, overlap=0.7)
    assert plan.estimate_step(work, a800, 8, needed, 0.7).epoch_hours == pytest.approx(12.0, rel=1e-6)
    assert mfu_for_target(work, dataclasses.replace(a800, network_gb_s=1e-3), 16, 12.0, 0.7) is None


def write_result(path, device, header, *rows):
    table = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)] + [f"| {' | '.join(r)} |" for r in rows]
    path.write_text("\n".join(["# throughput", "", "- date: 2026-11-26", f"- device: {device}", "", *table]) + "\n")
    return path


def test_calibration_recomputes_mfu_from_throughput_and_takes_the_best_row(tmp_path):
    result = write_result(tmp_path / "2026-11-26_throughput_h100.md", "NVIDIA H100 80GB HBM3",
                          ["attention", "samples_per_s", "peak GB"], ["flex", "50.0", "61"], ["triton", "60.0", "60"])
    found = read_throughput_result(result, 7e12)
    assert found.mfu == pytest.approx(7e12 * 60 / 989e12)
    assert "60 samples/s" in found.source
    percent = write_result(tmp_path / "mfu.md", "NVIDIA H100", ["config", "MFU"], ["a", "41.5%"], ["b", "38%"])
    assert read_throughput_result(percent, 7e12).mfu == pytest.approx(0.415)


def test_calibration_precedence_and_discovery(tmp_path):
    assert calibration(7e12, given_mfu=0.3, results_dir=tmp_path).mfu == 0.3
    assert calibration(7e12, results_dir=tmp_path).mfu == plan.DEFAULT_MFU
    write_result(tmp_path / "2026-11-01_throughput_h100.md", "NVIDIA H100", ["samples_per_s"], ["10"])
    write_result(tmp_path / "2026-11-20_throughput_h100.md", "NVIDIA H100", ["samples_per_s"], ["20"])
    assert calibration(7e12, results_dir=tmp_path).mfu == pytest.approx(7e12 * 20 / 989e12)
    # a newer CPU result cannot calibrate a GPU plan: the newest usable one does, and the plan says what it skipped
    write_result(tmp_path / "2026-11-25_throughput_cpu.md", "CPU (x86_64, 2 cores)", ["samples_per_s"], ["1"])
    skipping = calibration(7e12, results_dir=tmp_path)
    assert skipping.mfu == pytest.approx(7e12 * 20 / 989e12)
    assert "2026-11-25_throughput_cpu.md" in skipping.source and "not usable" in skipping.source
    only_cpu = tmp_path / "cpu_only"
    only_cpu.mkdir()
    write_result(only_cpu / "2026-11-25_throughput_cpu.md", "CPU (x86_64, 2 cores)", ["samples_per_s"], ["1"])
    skipped = calibration(7e12, results_dir=only_cpu)
    assert skipped.mfu == plan.DEFAULT_MFU and "no usable result" in skipped.source
    with pytest.raises(ValueError, match="no such file"):
        calibration(7e12, result=tmp_path / "missing.md")
    with pytest.raises(ValueError, match="--mfu 45"):
        calibration(7e12, given_mfu=45)
    given = calibration(7e12, given_mfu=0.3, results_dir=tmp_path, given_host_ms=250, given_activation_gb=2.5)
    assert (given.mfu, given.host_s, given.activation_gb) == (0.3, 0.25, 2.5) and "--host-ms" in given.source
    assert calibration(7e12, given_mfu=0.3, results_dir=tmp_path).activation_gb is None
    with pytest.raises(ValueError, match="--host-ms -1"):
        calibration(7e12, given_host_ms=-1, results_dir=tmp_path)



@pytest.mark.parametrize("device, header, row, refusal", [
    ("NVIDIA H200", ["samples/s"], ["0"], "compute MFU of 0.0%, outside"),
    ("NVIDIA H200", ["mfu"], ["0%"], "compute MFU of 0.0%, outside"),
    # a small model's profiled step, shorter than the optimiser step priced for the planned 2B parameters
    ("NVIDIA H200", ["micro batch", "samples/s", "step ms", "GPU busy ms"], ["1", "100", "10", "9.5"],
     "no longer than the optimiser step priced for the planned model"),
    ("NVIDIA H200", ["micro batch", "samples/s", "step ms", "GPU busy ms"], ["1", "100", "20", "16"],
     r"compute MFU of \d+\.\d%, outside"),   # ... or only a little longer: a kernel MFU far past 100 %
    ("Fancy GPU 9000", ["samples/s"], ["10"], "its '- device: Fancy GPU 9000' line: unknown GPU"),
])
def test_a_result_that_cannot_calibrate_is_refused_with_one_line_naming_it(tmp_path, capsys, device, header, row,
                                                                          refusal):
    result = write_result(tmp_path / "result.md", device, header, row)
    with pytest.raises(ValueError, match=refusal):
        read_throughput_result(result, 7e12, trained_params=2e9)
    assert main(["plan", "--calibrate", str(result)]) == 2
    assert capsys.readouterr().err.startswith(f"jala plan: {result}: ")


def test_a_calibration_file_with_a_bad_stage_line_or_bytes_is_refused_with_one_line(tmp_path, capsys):
    staged = write_result(tmp_path / "staged.md", "NVIDIA H200", ["samples/s"], ["10"])
    staged.write_text(staged.read_text().replace("- device:", "- ZeRO stage: three\n- device:"))
    assert main(["plan", "--calibrate", str(staged)]) == 2
    assert capsys.readouterr().err == f"jala plan: {staged}: its '- ZeRO stage:' line names no stage 2 or 3: fix " \
                                      "the line, or give --mfu\n"
    binary = tmp_path / "binary.md"
    binary.write_bytes(b"\xff\xfe not text")
    assert main(["plan", "--calibrate", str(binary)]) == 2
    assert capsys.readouterr().err == f"jala plan: --calibrate {binary}: not a text file; pass a throughput result " \
                                      "from benchmarks/results/\n"

def test_a_profiled_calibration_gives_back_the_measured_step_on_the_measuring_card(work, tmp_path):
    """Kernel time scaled by the card and the host floor: on the H200 it measured on, one GPU, the plan's step
    is the measured 944 ms plus only its own optimiser term (no communication on one GPU)."""
    result = write_result(tmp_path / "2026-11-26_throughput_h200.md", "NVIDIA H200",
                          ["gpus", "micro batch", "grad accum", "step ms", "samples/s", "GPU busy ms"],
                          ["1", "16", "1", "944", f"{16 / 0.944:.4g}", "340.4"])
    found = read_throughput_result(result, work.flops_per_sample)
    assert found.activation_gb is None  # no resident memory column
    h200 = plan.Cluster(CARDS["h200"])
    step = plan.estimate_step(work, h200, 1, found.mfu, 0.7, host_s=found.host_s)
    assert step.host_bound and step.step_s == pytest.approx(0.944 + step.optimizer_s)
    assert plan.estimate_step(work, h200, 1, found.mfu, 0.7).compute_s == pytest.approx(0.3404)
    # Told the trained parameters, the calibration leaves the optimiser step to the plan: one GPU's kernels then
    # come back as the measured busy time, not busy time plus a second optimiser step.
    lean = read_throughput_result(result, work.flops_per_sample, work.params_trained)
    gpu_only = plan.estimate_step(work, h200, 1, lean.mfu, 0.7)
    assert gpu_only.compute_s + gpu_only.optimizer_s == pytest.approx(0.3404)


def test_accumulation_repeats_the_micro_steps_host_time_not_the_optimiser_steps(work, tmp_path):
    """The shipped H200 result's phases: 297 ms of data, forward and backward, 168.7 ms of optimiser step."""
    result = write_result(tmp_path / "2026-11-27_throughput_h200.md", "NVIDIA H200",
                          ["gpus", "micro batch", "grad accum", "step ms", "data wait ms", "forward ms",
                           "backward ms", "optimizer step ms", "samples/s", "GPU busy ms"],
                          ["1", "16", "1", "466.4", "2.3", "98.1", "196.6", "168.7", f"{16 / 0.4664:.4g}", "296.1"])
    found = read_throughput_result(result, work.flops_per_sample)
    assert found.host_s == pytest.approx(0.297) and found.host_step_s == pytest.approx(0.1687)
    h200 = plan.Cluster(CARDS["h200"])
    one = plan.estimate_step(work, h200, 1, found.mfu, 0.7, host_s=found.host_s, host_step_s=found.host_step_s)
    assert one.host_bound and one.compute_s == pytest.approx(0.4657)  # the measured step's phases, summed
    eight = plan.estimate_step(work, h200, 1, found.mfu, 0.7, grad_accum=8, host_s=found.host_s,
                               host_step_s=found.host_step_s)
    assert eight.compute_s == pytest.approx(8 * 0.297 + 0.1687)
    assert eight.mfu > one.mfu
    assert "297 ms per micro-step plus 168.7 ms per optimiser step" in plan_report.host_floor_line(found)
    given = calibration(work.flops_per_sample, result=result, given_host_ms=300)
    assert (given.host_s, given.host_step_s) == (0.3, 0.0)


def test_a_host_floor_carries_only_to_a_plan_of_the_stage_it_was_measured_under(work, tmp_path):
    result = write_result(tmp_path / "2026-11-27_throughput_h200.md", "NVIDIA H200",
                          ["gpus", "micro batch", "grad accum", "step ms", "samples/s", "GPU busy ms"],
                          ["1", "16", "1", "466.4", f"{16 / 0.4664:.4g}", "296.1"])
    text = result.read_text().replace("- device:", "- ZeRO stage: 2 (as the benchmark notes it)\n- device:")
    result.write_text(text)
    same = calibration(work.flops_per_sample, result=result, zero_stage=2)
    assert same.zero_stage == 2 and same.host_s == pytest.approx(0.4664)
    other = calibration(work.flops_per_sample, result=result, zero_stage=3)
    assert other.host_s == 0 and other.mfu == same.mfu
    assert "measured under ZeRO-2 and this plan is ZeRO-3" in plan_report.host_floor_line(other)
    given = calibration(work.flops_per_sample, result=result, zero_stage=3, given_host_ms=700)
    assert given.host_s == pytest.approx(0.7) and given.host_note is None
    unnamed = write_result(tmp_path / "2026-11-26_throughput_h200.md", "NVIDIA H200",
                           ["gpus", "micro batch", "grad accum", "step ms", "samples/s", "GPU busy ms"],
                           ["1", "16", "1", "944", f"{16 / 0.944:.4g}", "340.4"])
    assert calibration(work.flops_per_sample, result=unnamed, zero_stage=2).host_s == pytest.approx(0.944)


def test_matmul_time_scales_with_peak_flops_and_the_rest_with_memory_bandwidth(work, tmp_path):
    """The H200's 340.4 ms of kernels, 168.7 of them in matmuls and attention: on an A800 the first part slows by
    the peak FLOP/s ratio and the rest by the HBM bandwidth ratio; on the H200 itself nothing changes, and
    without the split the whole kernel time scales with peak FLOP/s."""
    header = ["gpus", "micro batch", "grad accum", "step ms", "samples/s", "GPU busy ms"]
    row = ["1", "16", "1", "944", f"{16 / 0.944:.4g}", "340.4"]
    split = read_throughput_result(write_result(tmp_path / "2026-11-26_throughput_split.md", "NVIDIA H200",
                                                [*header, "GPU matmul+attention ms"], [*row, "168.7"]),
                                   work.flops_per_sample)
    whole = read_throughput_result(write_result(tmp_path / "2026-11-26_throughput_whole.md", "NVIDIA H200",
                                                header, row), work.flops_per_sample)
    h200, a800 = CARDS["h200"], CARDS["a800"]
    assert split.measured_on == h200 and split.bandwidth_share == pytest.approx(1 - 168.7 / 340.4)

    def kernel_seconds(calibration, target):
        return plan.estimate_step(work, plan.Cluster(target), 1, calibration.mfu_on(target), 0.7).compute_s

    assert kernel_seconds(split, h200) == pytest.approx(0.3404, rel=1e-3)
    assert kernel_seconds(split, a800) == pytest.approx(
        0.1687 * h200.bf16_tflops / a800.bf16_tflops + (0.3404 - 0.1687) * h200.hbm_tb_s / a800.hbm_tb_s, rel=1e-3)
    assert kernel_seconds(whole, a800) == pytest.approx(0.3404 * h200.bf16_tflops / a800.bf16_tflops, rel=1e-3)


def test_plan_command_prints_tables_paper_target_and_assumptions(capsys, tmp_path):
    assert main(["plan", "--gpus", "8", "--gpu", "a800", "--nodes", "2", "--mfu", "0.45", "--max-gpus", "64",
                 "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for text in ("TFLOP", "Weak scaling", "Strong scaling: global batch 128", "| 64 | 8 |", "16 x a800 (2 nodes)",
                 "68 h on 8 x A800", "12 h on 8 x A800", "compute MFU 45.0% (given with --mfu)", "## Assumptions"):
        assert text in out
    assert "no host floor" in out
    assert main(["plan", "--gpu", "a800", "--mfu", "0.338", "--host-ms", "944", "--max-gpus", "16"]) == 0
    out = capsys.readouterr().out
    for text in ("host floor 944 ms per micro-step", "| 16 | 2 | 128 | 8 x 1 | 0.944 | host |",
                 "and a host that issues a micro-step in", "plus activations (not measured"):
        assert text in out
    assert main(["plan", "--gpu", "a800", "--mfu", "0.338", "--activation-gb", "2.3", "--max-gpus", "8"]) == 0
    assert "fits in the a800's 80 GB" in capsys.readouterr().out
    assert main(["plan", "--gpu", "a800", "--mfu", "0.338", "--activation-gb", "9", "--max-gpus", "8"]) == 0
    assert "does NOT fit in the a800's 80 GB" in capsys.readouterr().out
    assert main(["plan", "--gpu", "tpu"]) == 2
    assert "unknown GPU 'tpu'" in capsys.readouterr().err
