"""``make bench``: every benchmark for the hardware at hand, then one summary of where the results went.

    python -m benchmarks.run_all            # real sizes on a GPU, smoke sizes on a CPU
    python -m benchmarks.run_all --smoke    # smoke sizes everywhere

On a CPU the kernel benchmarks can only run their smoke configurations (the Triton kernels need a GPU); the
loader benchmark is a CPU benchmark and runs at full size everywhere. The throughput benchmark trains on a
synthetic corpus it writes first: the tiny recipe on a CPU, the InternVL3-2B recipe with random weights on a GPU
(16 samples per GPU, one process; run ``jala bench throughput`` under torchrun for several GPUs).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import attention, data_loader, fused_lm_ops, grvq, lm_head
from benchmarks.report import RESULTS_DIR, device_name
from jala_ds.cli import main as jala


def throughput(full: bool, out: Path) -> int:
    """``jala bench throughput`` on a freshly synthesised corpus in the real on-disk format."""
    recipe, frame_size = ("pretrain_internvl3_2b", 448) if full else ("tiny_cpu", 64)
    with tempfile.TemporaryDirectory() as tmp:
        raw, mds = Path(tmp) / "raw", Path(tmp) / "mds"
        for step in (["data", "synth", "--out", str(raw), "--lab", "48", "--wild", "24", "--frame-size",
                      str(frame_size)],
                     ["data", "convert", "--src", str(raw), "--out", str(mds), "--recipe", recipe]):
            if jala(step):
                return 1
        overrides = [f"data.mds_dir={mds}", "model.pretrained=null", "model.visual_encoder_path=null",
                     "motion_tokenizer.kind=binning", f"train.global_batch_size={16 if full else 2}",
                     f"train.micro_batch_size={16 if full else 2}", "train.grad_accum_steps=1"]
        return jala(["bench", "throughput", "--recipe", recipe, "--out", str(out), *overrides])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smoke sizes even on a GPU")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    kernel_smoke = args.smoke or not torch.cuda.is_available()
    flag = ["--smoke"] if kernel_smoke else []
    before = set(args.out.glob("*.md")) if args.out.exists() else set()
    status = {
        "attention": attention.main([*flag, "--out", str(args.out)]),
        "grvq": grvq.main([*flag, "--out", str(args.out)]),
        "fused_lm_ops": fused_lm_ops.main([*flag, "--out", str(args.out)]),
        "lm_head": lm_head.main([*flag, "--out", str(args.out)]),
        "data_loader": data_loader.main([*(["--smoke"] if args.smoke else []), "--out", str(args.out)]),
        "throughput": throughput(not kernel_smoke, args.out),
    }
    written = sorted(set(args.out.glob("*.md")) - before)
    summary = args.out / f"{dt.date.today().isoformat()}_summary.md"
    lines = [f"# make bench, {dt.date.today().isoformat()}", "", f"- device: {device_name()}",
             f"- kernel sizes: {'smoke (no GPU)' if kernel_smoke else 'full'}", "",
             "| benchmark | exit | result |", "|---|---|---|"]
    lines += [f"| {name} | {code} | {', '.join(p.name for p in written if name in p.name) or '-'} |"
              for name, code in status.items()]
    summary.write_text("\n".join(lines) + "\n")
    print(summary.read_text())
    return max(status.values())


if __name__ == "__main__":
    sys.exit(main())
