"""``jala eval motion | latents``: how good a pretraining run is. Registration is cheap; torch loads in handlers.

    jala eval motion --ckpt demo_out/run --data demo_out/mds --split lab --limit 16 --ensemble 4 --seed 0
    jala eval latents --ckpt demo_out/run --data demo_out/mds --limit 32
    jala eval motion --ckpt runs/jala --data /data/mds --split wild model.attention=reference   # recipe overrides
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser("eval", help="evaluate a checkpoint: motion generation metrics, latent space")
    commands = evaluate.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")

    motion = commands.add_parser("motion", help="MCP generation on a held-out split: MPJPE, PA-MPJPE, MWTE, MDE, "
                                                "pictures, MLflow")
    add_checkpoint_arguments(motion)
    motion.add_argument("--data", required=True, help="the --out folder of `jala data convert` (with heldout/)")
    motion.add_argument("--split", required=True, choices=("lab", "wild"), help="held-out split to score")
    motion.add_argument("--limit", type=positive_int, default=None, help="score at most this many clips (default: all)")
    motion.add_argument("--ensemble", type=int, default=4, help="decodings averaged per chunk (default 4)")
    motion.add_argument("--fraction", type=float, default=0.05,
                        help="share of a chunk's tokens fixed per pass (default 0.05, the paper's)")
    motion.add_argument("--seed", type=int, default=0, help="the same seed gives the same motion (default 0)")
    motion.add_argument("--batch-size", type=positive_int, default=8,
                        help="clips per batch (x ensemble rows, default 8)")
    motion.add_argument("--procrustes", choices=("similarity", "rigid"), default="similarity",
                        help="PA-MPJPE's alignment: similarity (with scale, the usual PA-MPJPE; default) or rigid "
                             "(no scale, as the JALA paper words it)")
    motion.add_argument("--out", default=None, help="output folder (default: <ckpt>/eval/<split>)")
    motion.set_defaults(handler=run_motion)

    latents = commands.add_parser("latents", help="Fig. 4: PCA of predictive embeddings and latent actions, lab vs "
                                                  "wild, and their alignment (paired vs shuffled cosine)")
    add_checkpoint_arguments(latents)
    latents.add_argument("--data", required=True, help="a folder with lab/ and/or wild/ MDS datasets: a corpus "
                                                      "(training streams) or its heldout/ folder")
    latents.add_argument("--limit", type=positive_int, default=32, help="clips per subset (default 32)")
    latents.add_argument("--seed", type=int, default=0, help="seed of the shuffled pairs (default 0)")
    latents.add_argument("--batch-size", type=positive_int, default=8, help="clips per forward (default 8)")
    latents.add_argument("--out", default=None, help="output folder (default: <ckpt>/eval/latents)")
    latents.set_defaults(handler=run_latents)


def positive_int(text: str) -> int:
    """An argparse type: a count of at least 1 (a 0 or a negative count would quietly mean all, or all but some)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give a positive number")
    return value


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="a run's train.out_dir (latest checkpoint), one of its "
                                                      "checkpoints/step_N folders, or a `jala export` folder")
    parser.add_argument("--no-mlflow", action="store_true", help="write the files only, log nothing to MLflow")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides for rebuilding the model, e.g. model.attention=reference")


def run_motion(args: argparse.Namespace) -> int:
    from jala_ds.eval.mcp_decoding import Decoding
    from jala_ds.eval.motion_eval import evaluate_motion

    try:
        decoding = Decoding(fraction=args.fraction, ensemble=args.ensemble, seed=args.seed)
        result = evaluate_motion(args.ckpt, args.data, args.split, limit=args.limit, decoding=decoding,
                                 out_dir=args.out, batch_size=args.batch_size, overrides=args.overrides,
                                 procrustes=args.procrustes, track=not args.no_mlflow)
    except (FileNotFoundError, ValueError) as err:
        return fail("motion", err)
    print("wrote " + ", ".join(str(path) for path in result.files))
    return 0


def run_latents(args: argparse.Namespace) -> int:
    from jala_ds.eval.latent_space import latent_space

    try:
        latent_space(args.ckpt, args.data, limit=args.limit, out_dir=args.out, batch_size=args.batch_size,
                     seed=args.seed, overrides=args.overrides, track=not args.no_mlflow)
    except (FileNotFoundError, ValueError) as err:
        return fail("latents", err)
    return 0


def fail(command: str, err: Exception) -> int:
    print(f"jala eval {command}: {err}", file=sys.stderr)
    return 2
