"""``jala plan`` (how long an epoch takes on N GPUs), ``jala compare`` (MLflow runs side by side) and
``jala bench throughput`` (real training steps, timed).

    jala plan --gpus 8 --gpu a800                       # 8 x A800, the paper's recipe, scaling tables to 512 GPUs
    jala plan --gpus 8 --gpu h100 --nodes 4 --mfu 0.45  # a given compute MFU instead of a measured one
    jala plan --gpu h100 --mfu 0.45 --host-ms 300       # ... and a host that needs 300 ms per micro-step
    jala plan --calibrate benchmarks/results/2026-11-27_throughput_nvidia-h200.md
    jala compare --experiment jala-tiny --metric loss align_loss --out compare_tiny
    jala bench throughput --recipe tiny_cpu --steps 6 train.global_batch_size=2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

EAGER_WARMUP = 2
"""Untimed steps before ``jala bench throughput`` times: the loader's first batches and the allocator settle."""
COMPILED_WARMUP = 4
"""With ``train.compile_blocks``: the first steps compile each layer and recompile it for the perceivers' call
patterns and a first one-row batch (4 left none to compile while timing on the H200, 2026-11-27)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    plan = subparsers.add_parser("plan", help="epoch time vs GPU and node count (analytic, ZeRO-2 or 3)",
                                 description="Analytic model of step time: FLOPs at an MFU, plus the ds_config's "
                                             "ZeRO collectives over NVLink and the network. Prints every "
                                             "assumption.")
    plan.add_argument("--recipe", default="pretrain_internvl3_2b", help="recipe name or YAML path")
    plan.add_argument("overrides", nargs="*", help="recipe overrides, section.key=value")
    plan.add_argument("--gpu", default="a800", help="card: a100, a800, h100, h100-pcie, h800, h200, h20, l40s, "
                                                    "b200, mi300x (default a800)")
    plan.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    plan.add_argument("--nodes", type=int, default=1, help="nodes of the planned cluster (default 1)")
    plan.add_argument("--network-gbps", type=float, default=800.0,
                      help="inter-node bandwidth per node per direction in Gb/s (default 800 = 4 x 200 Gb/s)")
    plan.add_argument("--overlap", type=float, default=0.7,
                      help="fraction of communication hidden behind compute (default 0.7)")
    plan.add_argument("--max-gpus", type=int, default=512, help="largest GPU count in the tables (default 512)")
    plan.add_argument("--global-batch", type=int, default=None,
                      help="global batch of the strong-scaling table (default: the recipe's)")
    plan.add_argument("--mfu", type=float, default=None, help="compute MFU to assume, a fraction (e.g. 0.45)")
    plan.add_argument("--host-ms", type=float, default=None,
                      help="host milliseconds per micro-step, a floor under the compute time on any card "
                           "(default: measured with the MFU when the result was profiled, else none)")
    plan.add_argument("--activation-gb", type=float, default=None,
                      help="activation memory per sample of a micro-batch, GB (default: measured when the result "
                           "has resident memory, else not counted)")
    plan.add_argument("--calibrate", default=None, metavar="RESULTS.md",
                      help="throughput result to take the MFU (and host floor) from (default: newest in "
                           "--results-dir)")
    plan.add_argument("--results-dir", default="benchmarks/results", help="where throughput results are found")
    plan.add_argument("--epoch-samples", type=int, default=7_500_000, help="samples per epoch (default 7.5M)")
    plan.add_argument("--text-tokens", type=int, default=None,
                      help="instruction tokens per sample incl. the image delimiters (default 60)")
    plan.add_argument("--frozen-vision", action="store_true", help="count the InternViT tower as frozen")
    plan.set_defaults(handler=run_plan)

    compare = subparsers.add_parser("compare", help="compare MLflow runs: table, CSV, markdown, curves",
                                    description="Reads an MLflow store and writes comparison.csv, comparison.md "
                                                "and curves.png for the runs of one experiment.")
    compare.add_argument("--experiment", required=True, help="MLflow experiment name")
    compare.add_argument("--runs", nargs="+", action="extend", default=[], metavar="ID",
                         help="run ids, or enough of each to name one run (the table's 8 characters); default: "
                              "all runs")
    compare.add_argument("--metric", nargs="+", action="extend", metavar="NAME[:max]",
                         help="metrics to compare; best is the minimum unless NAME:max (default loss)")
    compare.add_argument("--job", default="train",
                         help="whose runs, without --runs: train (default), tokenizer, token-predictor or eval")
    compare.add_argument("--tracking-uri", default=None,
                         help="MLflow store (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    compare.add_argument("--out", default=None, help="output folder (default compare_<experiment>/)")
    compare.set_defaults(handler=run_compare)

    bench = subparsers.add_parser("bench", help="measured benchmarks of the training system")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    throughput = bench_sub.add_parser(
        "throughput", help="time real training steps: data, forward, backward, step; samples/s, MFU, memory",
        description="Runs --warmup + --steps training steps of the recipe through the trainer's code and "
                    "writes a dated markdown result (+ PNG) that `jala plan` calibrates from. Works as one "
                    "process or under torchrun / the deepspeed launcher (rank 0 writes).")
    throughput.add_argument("--recipe", required=True, help="recipe name or YAML path")
    throughput.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, section.key=value")
    throughput.add_argument("--steps", type=int, default=10, help="measured optimiser steps (default 10)")
    throughput.add_argument("--warmup", type=int, default=None,
                            help=f"untimed steps first (default {EAGER_WARMUP}, or {COMPILED_WARMUP} when the recipe "
                                 "compiles its layers: their compilations must fall inside the warm-up)")
    throughput.add_argument("--out", default=None, help="results folder (default benchmarks/results/)")
    throughput.add_argument("--profile", default=None, metavar="DIR",
                            help="after the timed steps, profile two more and write each rank's Chrome trace and "
                                 "top-operator table to DIR")
    throughput.set_defaults(handler=run_throughput)


def run_plan(args: argparse.Namespace) -> int:
    from jala_ds.bench import plan
    from jala_ds.bench.calibrate import calibration
    from jala_ds.bench.cards import card
    from jala_ds.bench.dims import model_dims
    from jala_ds.bench.flops import recipe_flops
    from jala_ds.bench.plan_report import PlanRequest, plan_report
    from jala_ds.config import load_config

    for name, value, low in (("--gpus", args.gpus, 1), ("--nodes", args.nodes, 1), ("--max-gpus", args.max_gpus, 1),
                             ("--epoch-samples", args.epoch_samples, 1), ("--global-batch", args.global_batch, 1),
                             ("--text-tokens", args.text_tokens, 0)):
        if value is not None and value < low:
            return _fail("plan", f"{name} {value}: must be at least {low}")
    if not 0 <= args.overlap <= 1 or not args.network_gbps > 0:   # `not >`: nan is refused too
        return _fail("plan", "--overlap must lie in [0, 1] and --network-gbps be positive")
    try:
        cfg = load_config(args.recipe, args.overrides)
        gpu = card(args.gpu, exact=True)
        dims = model_dims(cfg)
        count = recipe_flops(cfg, args.text_tokens, vision_trained=not args.frozen_vision, dims=dims)
        work = plan.Workload.from_recipe(cfg, count, dims, args.epoch_samples, vision_trained=not args.frozen_vision)
        calib = calibration(count.per_sample, args.mfu, args.calibrate, args.results_dir, args.host_ms,
                            args.activation_gb, work.params_trained, work.zero_stage)
    except ValueError as err:
        return _fail("plan", str(err))
    request = PlanRequest(cluster=plan.Cluster(gpu, args.gpus, args.network_gbps / 8), nodes=args.nodes,
                          overlap=args.overlap, max_gpus=args.max_gpus,
                          global_batch=args.global_batch or cfg.train.global_batch_size)
    print(plan_report(cfg, count, work, request, calib), end="")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from jala_ds.bench.compare import compare_runs
    from jala_ds.bench.tables import markdown_table

    try:
        result = compare_runs(args.experiment, args.runs, args.metric or ["loss"], args.tracking_uri, args.out,
                              args.job)
    except ValueError as err:
        return _fail("compare", str(err))
    print(markdown_table(result.rows))
    for kind, path in result.paths.items():
        print(f"{kind}: {path}")
    return 0


def run_throughput(args: argparse.Namespace) -> int:
    if args.steps < 1 or (args.warmup is not None and args.warmup < 0):
        return _fail("bench throughput", f"--steps {args.steps} --warmup {args.warmup}: give --steps >= 1 and "
                                         "--warmup >= 0")
    from jala_ds.train.preflight import check_run

    if args.warmup is None:
        args.warmup = default_warmup(args.recipe, args.overrides)
    from jala_ds.bench.throughput import measure_throughput
    from jala_ds.bench.throughput_report import benchmark_report, summary, write_throughput_result

    # The schedule spans exactly the steps run, so the learning rate warms up and decays as a real run would. The
    # benchmark saves and resumes nothing: an empty train.out_dir keeps the recipe's real run (its checkpoints,
    # saved on another world size) out of the preflight.
    with tempfile.TemporaryDirectory(prefix="jala_bench_") as no_run:
        plan = check_run(args.recipe, [*args.overrides, f"train.max_steps={args.warmup + args.steps}",
                                       f"train.out_dir={no_run}"])
        result = measure_throughput(plan, args.steps, args.warmup, benchmark_report().device_name, args.profile)
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary(result, args.recipe), end="")
        print(f"result: {write_throughput_result(result, args.recipe, args.out)}")
    return 0


def default_warmup(recipe: str, overrides: list[str]) -> int:
    """``COMPILED_WARMUP`` when the recipe (with ``overrides``) compiles its layers, else ``EAGER_WARMUP``."""
    from jala_ds.config import load_config

    compiled = load_config(recipe, overrides).train.compile_blocks is not None
    return COMPILED_WARMUP if compiled else EAGER_WARMUP


def _fail(command: str, message: str) -> int:
    print(f"jala {command}: {message}", file=sys.stderr)
    return 2
