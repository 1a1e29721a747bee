"""``jala data synth | convert | inspect | tokenize``: make a raw corpus, convert it to MDS shards, look inside,
add GRVQ motion tokens.

    jala data synth --out demo_out/raw --lab 24 --wild 16 --seed 0
    jala data convert --src demo_out/raw --out demo_out/mds --workers 2 --recipe tiny_cpu
    torchrun --nnodes 8 --nproc_per_node 1 ... $(which jala) data convert --recipe pretrain_internvl3_2b \
        --src RAW --out MDS --workers 64
    jala data synth --format lerobot --out demo_out/lerobot --episodes 6 --cameras 2
    jala data convert --format lerobot --recipe posttrain_tiny_cpu --src demo_out/lerobot --out demo_out/robot_mds \
        --horizon 16
    jala data inspect demo_out/mds
    jala data tokenize --tokenizer demo_out/tokenizer --src demo_out/mds --out demo_out/mds_tok
    torchrun --nproc_per_node 8 $(which jala) data tokenize --device cuda --tokenizer T --src S --out O   # split
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from jala_ds.data.mds_pieces import PIECE_CLIPS

if TYPE_CHECKING:
    from jala_ds.config import JalaConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="synthesise, convert and inspect training corpora")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    synth = commands.add_parser("synth", help="write a synthetic raw corpus shaped like UniHand-Mix, or a synthetic "
                                "robot dataset in the LeRobot v2.1 layout (--format lerobot)")
    synth.add_argument("--format", choices=("clips", "lerobot"), default="clips",
                       help="clips: raw hand clips (--lab, --wild); lerobot: toy-arm episodes (--episodes, --cameras)")
    synth.add_argument("--out", required=True, help="folder for manifest.jsonl, videos/ and mano/ (or the LeRobot "
                       "meta/, data/, videos/)")
    synth.add_argument("--lab", type=int, help="number of lab clips (MANO labelled)")
    synth.add_argument("--wild", type=int, help="number of in-the-wild clips (~10%% pseudo-labelled)")
    synth.add_argument("--episodes", type=int, help="--format lerobot: number of episodes")
    synth.add_argument("--cameras", type=int, default=2, help="--format lerobot: 1 or 2 cameras (default 2)")
    synth.add_argument("--seed", type=int, default=0, help="the same seed writes the same corpus (default 0)")
    synth.add_argument("--frame-size", type=int, default=64, help="video side in pixels, even (default 64)")
    synth.set_defaults(handler=run_synth)

    convert = commands.add_parser("convert", help="raw clips -> MDS shards (<out>/lab, <out>/wild, report.json); "
                                  "--format lerobot: a LeRobot dataset -> robot MDS shards",
                                  description="Raw clips: under torchrun (one rank per node, --workers decoding "
                                              "processes each) the ranks share out its pieces and rank 0 merges the "
                                              "datasets and the report; --out must be on a filesystem every node "
                                              "shares.")
    convert.add_argument("--format", choices=("clips", "lerobot"), default="clips",
                         help="clips: raw hand clips (manifest.jsonl); lerobot: a LeRobot v2.x robot dataset")
    convert.add_argument("--src", required=True, help="raw corpus folder with manifest.jsonl, or a LeRobot folder")
    convert.add_argument("--horizon", type=int, default=16,
                         help="--format lerobot: actions stored per frame (default 16)")
    convert.add_argument("--cameras", help="--format lerobot: comma-separated camera keys to keep (default all)")
    convert.add_argument("--out", required=True, help="output folder")
    convert.add_argument("--workers", type=int, default=1, help="decoding processes (default 1)")
    convert.add_argument("--recipe", required=True,
                         help="recipe whose settings shape the shards (data.frame_size, the held-out split, ...): the "
                              "one that will train on them")
    convert.add_argument("overrides", nargs="*", help="recipe overrides, e.g. data.frame_size=448")
    convert.add_argument("--shard-mb", type=int, default=64, help="shard size limit in MiB (default 64)")
    add_build_arguments(convert)
    convert.set_defaults(handler=run_convert)

    inspect = commands.add_parser("inspect", help="counts per subset/source/task and a few samples")
    inspect.add_argument("mds_dir", help="the --out folder of `jala data convert`")
    inspect.add_argument("--samples", type=int, default=3, help="records described per subset (default 3)")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(handler=run_inspect)

    tokenize = commands.add_parser("tokenize", help="add GRVQ motion tokens (left_tokens/right_tokens) to a corpus",
                                   description="Copies --src to --out with each hand's motion tokens added. Under "
                                               "torchrun the ranks share out its pieces; --out must then be one folder "
                                               "that they all write (a shared filesystem across nodes).")
    tokenize.add_argument("--tokenizer", required=True, help="checkpoint folder of `jala tokenizer train`")
    tokenize.add_argument("--src", required=True, help="MDS corpus (the --out folder of `jala data convert`)")
    tokenize.add_argument("--out", required=True, help="new MDS corpus with the token columns")
    tokenize.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="torch device for the tokenizer (default cpu; cuda is "
                                                          "each rank's own GPU)")
    add_build_arguments(tokenize)
    tokenize.set_defaults(handler=run_tokenize)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """What a corpus build does with an ``--out`` that already holds one (``jala_ds.data.mds_pieces``)."""
    parser.add_argument("--resume", action="store_true",
                        help="finish the build that stopped in --out, keeping the pieces it finished (also fine "
                             "on an empty --out, so job scripts can always pass it)")
    parser.add_argument("--overwrite", action="store_true", help="delete what --out holds and build it again")
    parser.add_argument("--piece-clips", type=int, default=PIECE_CLIPS,
                        help=f"clips per piece, the unit a resumed build keeps or redoes (default {PIECE_CLIPS})")


def run_synth(args: argparse.Namespace) -> int:
    if args.format == "lerobot":
        return run_synth_lerobot(args)
    from jala_ds.data.synth import synthesize_corpus

    if args.lab is None or args.wild is None:
        return fail("synth", ValueError("--format clips needs --lab and --wild (clip counts)"))
    try:
        manifest = synthesize_corpus(args.out, lab=args.lab, wild=args.wild, seed=args.seed, frame_size=args.frame_size)
    except (ValueError, FileExistsError) as err:
        return fail("synth", err)
    print(f"wrote {args.lab} lab + {args.wild} wild clips: {manifest}")
    return 0


def run_synth_lerobot(args: argparse.Namespace) -> int:
    from jala_ds.data.lerobot_synth import synthesize_lerobot

    if args.episodes is None:
        return fail("synth", ValueError("--format lerobot needs --episodes N"))
    try:
        out = synthesize_lerobot(args.out, episodes=args.episodes, cameras=args.cameras, seed=args.seed,
                                 frame_size=args.frame_size)
    except (ValueError, FileExistsError) as err:
        return fail("synth", err)
    print(f"wrote {args.episodes} toy-arm episodes ({args.cameras} camera(s)) in the LeRobot v2.1 layout: {out}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from jala_ds.config import load_config
    from jala_ds.data.convert import convert_corpus

    if not 1 <= args.shard_mb < 4096:   # streaming takes 0 as no limit, and refuses the others in its own words
        return fail("convert", ValueError(f"--shard-mb {args.shard_mb}: use 1 to 4095 (MiB; an MDS shard stays "
                                          "under 4 GiB)"))
    cfg = load_config(args.recipe, args.overrides)
    if args.format == "lerobot":
        return run_convert_lerobot(args, cfg)
    data = cfg.data
    reporting = os.environ.get("RANK", "0") == "0"   # under torchrun rank 0 speaks for all
    if reporting:
        print(f"converting with data.frame_size={data.frame_size} data.chunk_frames={data.chunk_frames} "
              f"data.wild_slowdown={data.wild_slowdown} data.min_pseudo_confidence={data.min_pseudo_confidence} "
              f"(recipe {args.recipe})")
    try:
        report = convert_corpus(args.src, args.out, data, workers=args.workers, shard_bytes=args.shard_mb << 20,
                                piece_clips=args.piece_clips, overwrite=args.overwrite, resume=args.resume)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        return fail("convert", err)
    if reporting:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(report["rejected_by_reason"].items())) or "none"
        print(f"{report['clips_in']} clips in = {report['written']} written {report['written_by_subset']} + "
              f"{report['rejected']} rejected ({reasons}); pseudo labels dropped: {report['pseudo_labels_dropped']}")
        print(f"report: {args.out}/report.json")
    return 0


def run_convert_lerobot(args: argparse.Namespace, cfg: JalaConfig) -> int:
    from jala_ds.data.lerobot_convert import convert_lerobot

    if args.resume:   # robot datasets are thousands of episodes: one process converts them in minutes
        return fail("convert", ValueError("--resume: a LeRobot conversion is not built in pieces; rerun it with "
                                          "--overwrite"))
    cameras = [c.strip() for c in args.cameras.split(",") if c.strip()] if args.cameras else None
    print(f"converting with --horizon {args.horizon}, data.frame_size={cfg.data.frame_size}, "
          f"robot.norm_mode={cfg.robot.norm_mode} (recipe {args.recipe})")
    try:
        report = convert_lerobot(args.src, args.out, action_horizon=args.horizon, cameras=cameras,
                                 frame_size=cfg.data.frame_size, norm_mode=cfg.robot.norm_mode,
                                 shard_bytes=args.shard_mb << 20, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        return fail("convert", err)
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(report["rejected_by_reason"].items())) or "none"
    print(f"{report['episodes_in']} episodes ({report['frames_in']} frames) in = {report['episodes_written']} "
          f"written ({report['frames_written']} frames) + {report['episodes_rejected']} rejected ({reasons})")
    print(f"report: {args.out}/report.json; statistics: {args.out}/norm_stats.json")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from jala_ds.data.inspect_corpus import format_summary, summarize

    try:
        summary = summarize(args.mds_dir, samples=args.samples)
    except (FileNotFoundError, ValueError) as err:   # ValueError: a damaged index, report, ledger or shard
        return fail("inspect", err)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def run_tokenize(args: argparse.Namespace) -> int:
    from jala_ds.motion.corpus_tokenize import tokenize_corpus

    try:
        report = tokenize_corpus(args.tokenizer, args.src, args.out, device=args.device, resume=args.resume,
                                 overwrite=args.overwrite, piece_clips=args.piece_clips)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        return fail("tokenize", err)
    if os.environ.get("RANK", "0") == "0":   # under torchrun rank 0 speaks for all
        print(json.dumps(report, indent=2))
    return 0


def fail(command: str, err: Exception) -> int:
    print(f"jala data {command}: {err}", file=sys.stderr)
    return 2
