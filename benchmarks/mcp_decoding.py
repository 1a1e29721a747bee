"""Motion decoding speed: short passes against the recorded keys and values (``Decoding.reuse_context``: over the
chunk being filled for MCP, over the one token just written for ntp) against a pass over the whole sequence every
time, side by side on one model.

    python -m benchmarks.mcp_decoding                                            # tiny recipe, ~1 min on a CPU
    python -m benchmarks.mcp_decoding model.arch=internvl3_2b_narrow model.align_layer=19   # InternVL3-2B's depth
    python -m benchmarks.mcp_decoding model.objective=ntp model.align=false model.decoupled_ema=false   # Being-H0

A synthetic corpus in the real MDS format is written first (or ``--mds`` names one converted for the recipe);
the model has random weights, which decode as fast as trained ones. Both variants generate the same windows
with the same seeds, interleaved over ``--rounds``; the fastest round of each counts.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import device_name, write_results


def decode_seconds(generator, records: list, reuse: bool) -> float:
    """Wall seconds of ``generator.generate(records)`` with ``reuse_context`` set to ``reuse``."""
    import dataclasses

    generator.decoding = dataclasses.replace(generator.decoding, reuse_context=reuse)
    started = time.perf_counter()
    with torch.no_grad():
        generator.generate(records)
    return time.perf_counter() - started


def run(recipe: str, overrides: list[str], mds: Path, records: int, ensemble: int, rounds: int,
        out_dir: Path | None) -> list[dict]:
    from streaming import LocalDataset

    from jala_ds.config import load_config
    from jala_ds.eval.mcp_decoding import Decoding, MotionGenerator
    from jala_ds.model.build import build_model
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    cfg = load_config(recipe, [f"data.mds_dir={mds}", "model.pretrained=null", "model.visual_encoder_path=null",
                               *overrides])
    tokenizer = load_text_tokenizer(None, cfg.model.arch)
    vocab = add_motion_vocab(tokenizer, cfg.motion_tokenizer.vocab_per_part)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, vocab).eval()
    lab = LocalDataset(local=str(mds / "lab"))
    windows = [lab[i] for i in range(min(records, len(lab)))]
    generator = MotionGenerator(cfg, model, tokenizer, vocab, decoding=Decoding(ensemble=ensemble))
    decode_seconds(generator, windows[:1], reuse=True)  # first calls allocate and warm caches
    best = {True: float("inf"), False: float("inf")}
    for _ in range(rounds):
        for reuse in (True, False):
            best[reuse] = min(best[reuse], decode_seconds(generator, windows, reuse))
    passes, mcp = generator.passes_per_chunk, cfg.model.objective == "mcp"
    short = "the chunk" if mcp else "the token just written"
    rows = [{"passes": f"{label}", "ms per window": best[reuse] * 1e3 / len(windows),
             "whole / this": best[False] / best[reuse]}
            for reuse, label in ((False, "every pass over the whole sequence"),
                                 (True, f"1 whole pass, then {passes - 1} over {short}"))]
    command = " ".join(["python -m benchmarks.mcp_decoding", *overrides, f"--records {records}",
                        f"--ensemble {ensemble}", f"--rounds {rounds}"])
    notes = [f"`{command}`: recipe {recipe} (model.arch={cfg.model.arch}), random weights, {len(windows)} "
             f"windows of {cfg.data.max_chunks} chunk(s) per hand, {ensemble} ensemble members, {passes} passes "
             "per chunk; wall time of `MotionGenerator.generate`, fastest of the rounds, measured side by side"]
    name, title = (("mcp_decoding", "MCP decoding: short passes over the chunk being filled") if mcp else
                   ("ntp_decoding", "Next-token decoding: one position per pass against the recorded keys and values"))
    path = write_results(name, rows, title=title, device=device_name(), notes=notes, out_dir=out_dir)
    print(path.read_text())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mcp_decoding", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides, section.key=value")
    parser.add_argument("--recipe", default="tiny_cpu")
    parser.add_argument("--mds", type=Path, default=None, help="a corpus converted for the recipe (default: synthesise)")
    parser.add_argument("--records", type=int, default=4, help="windows generated per round")
    parser.add_argument("--ensemble", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.mds is not None:
        run(args.recipe, args.overrides, args.mds, args.records, args.ensemble, args.rounds, args.out)
        return 0
    from benchmarks.host_overhead import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        run(args.recipe, args.overrides, synthesize(Path(tmp)), args.records, args.ensemble, args.rounds, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
