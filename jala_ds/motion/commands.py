"""``jala tokenizer ...`` (the GRVQ motion tokenizer) and ``jala token-predictor ...`` (the "JALA w/o latent"
baseline's action-token predictor).

    jala tokenizer train --recipe tiny_cpu data.mds_dir=demo_out/mds --steps 300 --out demo_out/tokenizer
    torchrun --nproc_per_node 8 $(which jala) tokenizer train --recipe pretrain_internvl3_2b
    jala token-predictor train --recipe tiny_cpu data.mds_dir=demo_out/mds --out demo_out/predictor
    jala token-predictor label --recipe tiny_cpu --predictor demo_out/predictor --src demo_out/mds --out demo_out/mds_pseudo
    torchrun --nproc_per_node 8 $(which jala) token-predictor label --recipe pretrain_internvl3_2b --src S --out O

The corpus' tokenization (``jala data tokenize``) calls ``jala_ds.motion.corpus_tokenize.tokenize_corpus``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from jala_ds.data.commands import add_build_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    tokenizer = subparsers.add_parser("tokenizer", help="train the GRVQ motion tokenizer")
    actions = tokenizer.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train on the MANO sequences of <data.mds_dir>/lab and /wild",
                               description="Trains the per-part Conv1D + GRVQ tokenizer (motion_tokenizer section "
                                           "of the recipe), logs to MLflow and writes a checkpoint folder that "
                                           "motion_tokenizer.checkpoint can point at. Data-parallel under torchrun.")
    add_train_arguments(train, "motion_tokenizer", "grvq_tokenizer")

    predictor = subparsers.add_parser("token-predictor", help="the action-token predictor of the JALA w/o latent "
                                                               "baseline: train it, pseudo-label video-only clips")
    actions = predictor.add_subparsers(dest="token_predictor_command", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train on the labelled chunks of <data.mds_dir>/lab and /wild",
                               description="Trains a perceiver (LAP's shape, model.perceiver_*) over the frozen "
                                           "visual encoder to predict each chunk's motion tokens from its boundary "
                                           "frames; logs to MLflow and writes a checkpoint folder. Data-parallel "
                                           "under torchrun.")
    add_train_arguments(train, "token_predictor", "token_predictor")
    label = actions.add_parser("label", help="copy a corpus with its video-only clips pseudo-labelled",
                               description="Writes --src to --out with predicted motion tokens (and labeled=1) for "
                                           "every video-only training clip, for the hands data.video_only_hands "
                                           "names; pretrain on --out with model.align=false model.decoupled_ema=false. Under torchrun the "
                                           "ranks share out its pieces, each on its own GPU; --out must then be one "
                                           "folder that they all write (a shared filesystem across nodes).")
    label.add_argument("--recipe", required=True, help="recipe name or YAML path (token layout, video_only_hands)")
    label.add_argument("overrides", nargs="*", help="recipe overrides, section.key=value")
    label.add_argument("--predictor", default=None, help="checkpoint folder (default token_predictor.checkpoint, "
                                                         "else <train.out_dir>/token_predictor)")
    label.add_argument("--src", required=True, help="the converted (or tokenized) corpus")
    label.add_argument("--out", required=True, help="a new folder for the pseudo-labelled copy")
    label.add_argument("--device", default=None, choices=("cpu", "cuda"), help="cpu or cuda (default: cuda when there is one, "
                                                         "each rank's own)")
    add_build_arguments(label)
    label.set_defaults(handler=run_predictor_label)


def add_train_arguments(train: argparse.ArgumentParser, section: str, default_folder: str) -> None:
    """The arguments every ``jala <model> train`` takes; ``section`` is the recipe section of the model."""
    train.add_argument("--recipe", required=True, help="recipe name (tiny_cpu, ...) or YAML path")
    train.add_argument("overrides", nargs="*", help="recipe overrides, section.key=value")
    train.add_argument("--steps", type=int, default=None, help=f"optimiser steps (default {section}.train_steps)")
    train.add_argument("--out", default=None, help=f"checkpoint folder (default {section}.checkpoint, else "
                                                   f"<train.out_dir>/{default_folder})")
    train.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in the folder")
    train.set_defaults(handler=run_train)


TRAINERS = {"tokenizer": ("jala_ds.motion.train_tokenizer", "train_tokenizer"),
            "token-predictor": ("jala_ds.motion.train_token_predictor", "train_token_predictor")}
"""The training job behind each ``jala <command> train``, imported when it runs."""


def run_train(args: argparse.Namespace) -> int:
    from jala_ds.config import load_config
    from jala_ds.config_checks import ConfigError

    if args.steps is not None and args.steps <= 0:
        raise ConfigError(f"--steps {args.steps}: must be a positive number of optimiser steps")
    cfg = load_config(args.recipe, args.overrides)
    module, function = TRAINERS[args.command]
    try:
        getattr(importlib.import_module(module), function)(cfg, steps=args.steps, out_dir=args.out,
                                                           overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:   # no corpus or labels, --out taken
        print(f"jala {args.command} train: {err}", file=sys.stderr)
        return 2
    return 0


def run_predictor_label(args: argparse.Namespace) -> int:
    import torch

    from jala_ds.config import load_config
    from jala_ds.motion.pseudo_label import pseudo_label_corpus
    from jala_ds.motion.token_predictor import default_checkpoint

    cfg = load_config(args.recipe, args.overrides)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        pseudo_label_corpus(cfg, args.predictor or default_checkpoint(cfg), args.src, args.out, device,
                            resume=args.resume, overwrite=args.overwrite, piece_clips=args.piece_clips)
    except (FileNotFoundError, FileExistsError, ValueError) as err:   # no predictor or corpus, --out taken
        print(f"jala token-predictor label: {err}", file=sys.stderr)
        return 2
    return 0
