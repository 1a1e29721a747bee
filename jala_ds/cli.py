"""The ``jala`` console script: one entry point, sub-commands grouped by package.

    jala data synth --out raw --lab 24 --wild 16      # a tiny corpus in the raw clip format
    jala data convert --recipe tiny_cpu --src raw --out mds   # raw clips -> MDS shards
    jala train --recipe tiny_cpu train.max_steps=20   # pretraining (also under deepspeed / torchrun)
    jala posttrain --recipe posttrain_tiny_cpu --init demo_out/export   # robot post-training
    jala serve --ckpt demo_out/policy                 # a post-trained policy over HTTP on 127.0.0.1
    jala --help                                       # everything else

Each package registers its commands in its ``commands.py`` with ``register(subparsers)``; registration is
cheap (heavy imports happen inside the handlers), so ``jala --help`` stays instant.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import re
import sys

from jala_ds.config_checks import ConfigError, InputError

OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=.*")
"""A recipe override, ``section.key=value``."""
COMMAND_MODULES = (
    "jala_ds.data.commands",
    "jala_ds.motion.commands",
    "jala_ds.train.commands",
    "jala_ds.bench.commands",
    "jala_ds.eval.policy_commands",
    "jala_ds.eval.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jala", description="JALA pretraining at scale")
    # Launchers put --local_rank right after the script (`jala --local_rank=0 train ...`); ranks come from
    # the LOCAL_RANK variable they also export, so the flag is accepted and not used.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # argparse ends a command's KEY=VALUE overrides at its first option; those after one come back unknown
    if rest and hasattr(args, "overrides") and all(OVERRIDE.fullmatch(token) for token in rest):
        args.overrides = [*args.overrides, *rest]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.handler(args) or 0
    except (ConfigError, InputError) as err:
        # Under a launcher every rank finds the same error: one line per node, from its first local rank.
        if os.environ.get("LOCAL_RANK", "0") == "0":
            prefix = "jala: config error" if isinstance(err, ConfigError) else f"jala {args.command}"
            print(f"{prefix}: {err}", file=sys.stderr)
        return 2


def console() -> int:
    """The console script (and ``python -m jala_ds.cli``): ``main``, then an exit without the last collections.

    A training rank ends holding a large object graph (torch, transformers, DeepSpeed, MLflow and the run's own);
    the interpreter's final garbage collections walk all of it, about 2 s per process on a CPU core, only to free
    memory the OS reclaims anyway. Frozen objects are out of the collector's sight; atexit handlers still run, and
    reference counting still closes files and shared memory. Not in ``main``: tests call it in their own process.
    """
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console())
