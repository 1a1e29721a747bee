"""``jala train``, ``jala posttrain`` and ``jala export``. Registration is cheap: DeepSpeed, torch and MLflow load
in the handlers.

    jala train --recipe tiny_cpu train.max_steps=20                       # one process
    deepspeed --num_gpus 2 $(which jala) train --recipe tiny_cpu          # the deepspeed launcher
    torchrun --nproc_per_node 2 $(which jala) train --recipe tiny_cpu     # torchrun
    jala export --run demo_out/run --out demo_out/export                  # a Hugging Face folder
    jala posttrain --recipe posttrain_tiny_cpu --init demo_out/export     # robot post-training (deepspeed too)
"""
from __future__ import annotations

import argparse
import logging
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="pretrain JALA (single process, torchrun or the deepspeed launcher)",
                                  description="Pretrain JALA from a recipe; overrides are section.key=value.")
    train.add_argument("--recipe", required=True, help="recipe name (tiny_cpu, pretrain_internvl3_2b) or YAML path")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.lr=3e-4 data.mds_dir=data/mds")
    train.set_defaults(handler=run_train)

    posttrain = subparsers.add_parser(
        "posttrain", help="post-train a pretrained JALA with a flow-matching action head on robot data",
        description="Post-train from a recipe (posttrain_libero, posttrain_tiny_cpu, ...); overrides are "
                    "section.key=value.")
    posttrain.add_argument("--recipe", required=True, help="recipe name or YAML path")
    posttrain.add_argument("--init", default=None,
                           help="pretrained JALA: a `jala export` folder or a pretraining run's train.out_dir "
                                "(default: the recipe's posttrain.init)")
    posttrain.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. robot.mds_dir=data/libero_mds")
    posttrain.set_defaults(handler=run_posttrain)

    export = subparsers.add_parser("export", help="a Hugging Face folder from a run's latest checkpoint")
    export.add_argument("--run", required=True, help="the run's train.out_dir")
    export.add_argument("--out", default=None, help="output folder (default: <run>/export)")
    export.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="weight dtype of the export")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out")
    export.set_defaults(handler=run_export)


def log_from_rank_0() -> None:
    """INFO lines from rank 0, only warnings from the others, each line tagged with its rank."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")


def run_train(args: argparse.Namespace) -> int:
    from jala_ds.train.preflight import check_run

    plan = check_run(args.recipe, args.overrides)  # a ConfigError here is one line and exit code 2
    log_from_rank_0()
    from jala_ds.train.loop import train

    train(plan)
    leave_process_group()
    return 0


def run_posttrain(args: argparse.Namespace) -> int:
    from jala_ds.train.posttrain import check_posttrain

    plan = check_posttrain(args.recipe, args.overrides, args.init)  # a ConfigError here is one line and exit code 2
    log_from_rank_0()
    from jala_ds.train.posttrain import posttrain

    posttrain(plan)
    leave_process_group()
    return 0


def leave_process_group() -> None:
    """Close the process group before the interpreter exits: left to the exit, its threads can abort a finished
    rank ("terminate called without an active exception"), which the launcher reports as a failed job."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def run_export(args: argparse.Namespace) -> int:
    from jala_ds.config_checks import InputError
    from jala_ds.train.export import export_run

    try:
        out = export_run(args.run, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError) as err:   # the message names the folder and what to pass
        raise InputError(str(err)) from err
    print(f"exported to {out}")
    return 0
