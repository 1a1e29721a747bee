"""``make bench``: every benchmark for the hardware at hand, then one summary of where the results went.

    python -m benchmarks.run_all            # real sizes on a GPU, smoke sizes on a CPU
    python -m benchmarks.run_all --smoke    # smoke sizes everywhere

On a CPU the kernel benchmarks can only run their smoke configurations (the Triton kernels need a GPU); the
loader benchmark is a CPU benchmark and runs at full size everywhere. The throughput benchmark trains on a
synthetic corpus it writes first: the tiny recipe on a CPU, the InternVL3-2B recipe with random weights on a GPU
(16 samples per GPU, one process; run ``jala bench throughput`` under torchrun for several GPUs), and the same
training step with each of our host-side changes undone in turn (``benchmarks/host_variants.py``). Last, ZeRO-2's
optimiser step with DeepSpeed's gradient checks against the multi-tensor ones (``benchmarks/zero_grad_checks.py``)
and its backward with DeepSpeed's per-parameter gradient reduction against the bucketed one
(``benchmarks/zero_grad_buckets.py``).
Each runs in a process of its own; on a CPU the kernel benchmarks get Triton's interpreter (``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.report import RESULTS_DIR, device_name


def benchmark(name: str, args: list[str], interpret: bool = False) -> int:
    """``python -m benchmarks.<name> *args`` in a process of its own, with Triton's interpreter when ``interpret``:
    Triton builds itself for the interpreter or the GPU when a process first imports it, so a benchmark that
    followed another in one process would find it built the other way."""
    env = {**os.environ, **({"TRITON_INTERPRET": "1"} if interpret else {})}
    return subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], env=env).returncode


def throughput(full: bool, out: Path) -> dict[str, int]:
    """``jala bench throughput``, then ``benchmarks.host_variants``, on a freshly synthesised corpus in the real
    on-disk format (each command in a process of its own, so the process group the trainer starts ends with it).
    On a CPU the variants train the tiny recipe under ZeRO-2 in bf16, where all of our host-side changes apply."""
    recipe, frame_size = ("pretrain_internvl3_2b", 448) if full else ("tiny_cpu", 64)
    with tempfile.TemporaryDirectory() as tmp:
        raw, mds = Path(tmp) / "raw", Path(tmp) / "mds"
        overrides = [f"data.mds_dir={mds}", "model.pretrained=null", "model.visual_encoder_path=null",
                     "motion_tokenizer.kind=binning", f"train.global_batch_size={16 if full else 2}",
                     f"train.micro_batch_size={16 if full else 2}", "train.grad_accum_steps=1"]
        for step in (["data", "synth", "--out", str(raw), "--lab", "48", "--wild", "24", "--frame-size",
                      str(frame_size)],
                     ["data", "convert", "--src", str(raw), "--out", str(mds), "--recipe", recipe]):
            code = subprocess.run([sys.executable, "-m", "jala_ds.cli", *step]).returncode
            if code:
                return {"throughput": code, "host_variants": code}
        codes = {"throughput": subprocess.run([sys.executable, "-m", "jala_ds.cli", "bench", "throughput", "--recipe",
                                               recipe, "--out", str(out), *overrides]).returncode}
        on_cpu = [] if full else ["train.ds_config=ds_configs/zero2.json", "train.dtype=bf16"]
        codes["host_variants"] = benchmark("host_variants", ["--recipe", recipe, "--out", str(out), *overrides,
                                                             *on_cpu, f"train.out_dir={Path(tmp) / 'run'}"])
    return codes


def markdown_versions(folder: Path) -> dict[Path, int]:
    """Each markdown result in ``folder`` with its modification time (ns)."""
    return {path: path.stat().st_mtime_ns for path in folder.glob("*.md")} if folder.exists() else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="smoke sizes even on a GPU")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    kernel_smoke = args.smoke or not torch.cuda.is_available()
    flag = ["--smoke"] if kernel_smoke else []
    # A result of the same benchmark from earlier today has the same name and is overwritten: what counts as
    # written is a file that is new or changed, not a name that was missing.
    before = markdown_versions(args.out)
    out = ["--out", str(args.out)]
    interpret = not torch.cuda.is_available()  # the kernels' Triton on a CPU
    status = {
        **{name: benchmark(name, [*flag, *out], interpret) for name in ("attention", "grvq", "fused_lm_ops", "lm_head")},
        "data_loader": benchmark("data_loader", [*(["--smoke"] if args.smoke else []), *out]),
        **throughput(not kernel_smoke, args.out),
        **{name: benchmark(name, [*(["--rounds", "1", "--steps", "2"] if args.smoke else []), *out])
           for name in ("zero_grad_checks", "zero_grad_buckets")},
    }
    after = markdown_versions(args.out)
    written = sorted(path for path, version in after.items() if before.get(path) != version)
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
