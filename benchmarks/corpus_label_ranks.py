"""Pseudo-labelling (``jala token-predictor label``) on one rank and on several torchrun ranks, side by side on
one corpus: what splitting the copy across ranks buys.

    python -m benchmarks.corpus_label_ranks                      # tiny recipe, 1 against 2 ranks, ~3 min on 2 cores
    python -m benchmarks.corpus_label_ranks --ranks 8 --mds /data/mds --recipe pretrain_internvl3_2b   # a GPU node

A synthetic corpus in the real MDS format is written first (or ``--mds`` names one converted for the recipe);
the predictor has random weights, which label as fast as trained ones. Each launch labels the whole corpus into a
new folder; the rate is the one the command reports (clips over the slowest rank's copying time, start-up left
out). Launches alternate over ``--rounds`` and the fastest of each rank count counts.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import device_name, write_results

RATE = re.compile(r"at ([0-9.]+) clips/s on (\d+) rank")


def labelled_clips_per_s(ranks: int, recipe: str, overrides: list[str], predictor: Path, mds: Path, out: Path,
                         piece_clips: int) -> float:
    """The clips/s that ``ranks`` torchrun ranks report labelling ``mds`` into ``out``."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           "-m", "jala_ds.cli", "token-predictor", "label", "--recipe", recipe, *overrides,
           "--predictor", str(predictor), "--src", str(mds), "--out", str(out), "--piece-clips", str(piece_clips)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    found = RATE.search(result.stdout)
    if result.returncode or not found:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return float(found.group(1))


def run(recipe: str, overrides: list[str], mds: Path, ranks: int, rounds: int, piece_clips: int, scratch: Path,
        out_dir: Path | None) -> list[dict]:
    from jala_ds.config import load_config
    from jala_ds.motion.token_predictor import build_token_predictor, save_token_predictor

    command = " ".join(["python -m benchmarks.corpus_label_ranks", *overrides, f"--ranks {ranks}",
                        f"--rounds {rounds}", f"--piece-clips {piece_clips}"])
    overrides = [f"data.mds_dir={mds}", "model.visual_encoder_path=null", *overrides]
    cfg = load_config(recipe, overrides)
    predictor = save_token_predictor(build_token_predictor(cfg), scratch / "predictor", {"steps": 0})
    best = {1: 0.0, ranks: 0.0}
    for round_ in range(rounds):
        for count in best:
            rate = labelled_clips_per_s(count, recipe, overrides, predictor, mds, scratch / f"out_{count}_{round_}",
                                        piece_clips)
            best[count] = max(best[count], rate)
    rows = [{"ranks": count, "clips/s": rate, "speed-up": rate / best[1]} for count, rate in best.items()]
    notes = [f"`{command}`: recipe {recipe}, random predictor weights, {os.cpu_count()} CPU cores; the rate each "
             "launch reports (every clip of the corpus over the slowest rank's copying time, start-up left out), "
             "fastest of the rounds, launches alternating"]
    path = write_results("corpus_label_ranks", rows, title="pseudo-labelling split across torchrun ranks",
                         device=device_name(), notes=notes, out_dir=out_dir)
    print(path.read_text())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus_label_ranks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides, section.key=value")
    parser.add_argument("--recipe", default="tiny_cpu")
    parser.add_argument("--mds", type=Path, default=None, help="a corpus converted for the recipe (default: synthesise)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the split run, against 1 (default 2)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--piece-clips", type=int, default=64,
                        help="clips per piece, the unit the ranks share out (default 64: the synthetic corpus in 13; "
                             "at scale, the command's default)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.mds is None:
            from benchmarks.host_overhead import synthesize

            args.mds = synthesize(Path(tmp), lab=120, wild=680)   # long enough runs to time (about a second)
        run(args.recipe, args.overrides, args.mds, args.ranks, args.rounds, args.piece_clips, Path(tmp),
            args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
