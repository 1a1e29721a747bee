"""``jala tokenizer ...``: the GRVQ motion tokenizer's commands.

    jala tokenizer train --recipe tiny_cpu data.mds_dir=demo_out/mds --steps 300 --out demo_out/tokenizer
    torchrun --nproc_per_node 8 $(which jala) tokenizer train --recipe pretrain_internvl3_2b

The corpus' tokenization (``jala data tokenize``) calls ``jala_ds.motion.corpus_tokenize.tokenize_corpus``.
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    tokenizer = subparsers.add_parser("tokenizer", help="train the GRVQ motion tokenizer")
    actions = tokenizer.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train on the MANO sequences of <data.mds_dir>/lab and /wild",
                               description="Trains the per-part Conv1D + GRVQ tokenizer (motion_tokenizer section "
                                           "of the recipe), logs to MLflow and writes a checkpoint folder that "
                                           "motion_tokenizer.checkpoint can point at. Data-parallel under torchrun.")
    train.add_argument("--recipe", required=True, help="recipe name (tiny_cpu, ...) or YAML path")
    train.add_argument("overrides", nargs="*", help="recipe overrides, section.key=value")
    train.add_argument("--steps", type=int, default=None, help="optimiser steps (default motion_tokenizer.train_steps)")
    train.add_argument("--out", default=None, help="checkpoint folder (default motion_tokenizer.checkpoint, "
                                                   "else <train.out_dir>/grvq_tokenizer)")
    train.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from jala_ds.config import load_config
    from jala_ds.config_checks import ConfigError
    from jala_ds.motion.train_tokenizer import train_tokenizer

    if args.steps is not None and args.steps <= 0:
        raise ConfigError(f"--steps {args.steps}: must be a positive number of optimiser steps")
    cfg = load_config(args.recipe, args.overrides)
    try:
        train_tokenizer(cfg, steps=args.steps, out_dir=args.out)
    except (FileNotFoundError, ValueError) as err:   # missing corpus, no MANO labels, bad chunk length
        print(f"jala tokenizer train: {err}", file=sys.stderr)
        return 2
    return 0
