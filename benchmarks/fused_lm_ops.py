"""The language model's fused RMSNorm, SwiGLU and rotary kernels against eager PyTorch and torch.compile.

    python -m benchmarks.fused_lm_ops            # GPU: one micro-step's activations of InternVL3-2B's LM, bf16
    python -m benchmarks.fused_lm_ops --smoke    # tiny CPU run (Triton in the interpreter): what the tests call

Shapes: 16 samples x 576 tokens = 9216 rows of the LM's 1536 features (RMSNorm), 8960 MLP features (SwiGLU),
12 query heads and 2 key heads of 128 (rotary, in the transposed layout the projections hand over). Each
contender runs one training call, forward then backward, side by side in one process on the same inputs. Per
row: ms, effective GB/s over the bytes the call must move at least (RMSNorm: read x, write y; read dy and x,
write dx: 10 B per bf16 element; SwiGLU: 16 B; rotary: 8 B), that as a share of the card's peak bandwidth,
speed-ups over eager and torch.compile, and the time per training step, which runs each op 57 times (two
RMSNorms per layer and a final one) or 28 times. On a GPU also the kernels' own time per call and bandwidth: at
these sizes an RMSNorm's or rotation's kernels finish before the host has launched the next call's, so the
timed call measures the host (2026-11-27, H200: 0.4-0.85 ms per call whichever the implementation). Results: a
dated markdown table in benchmarks/results/ and the ``benchmarks`` MLflow experiment.
"""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.report import device_name, write_results
from benchmarks.timing import environment, kernel_ms, peak_bandwidth, time_ms
from jala_kernels import rms_norm, rms_norm_reference, rotary, rotary_reference, swiglu, swiglu_reference

FULL = {"rows": 16 * 576, "hidden": 1536, "intermediate": 8960, "heads": 12, "kv_heads": 2, "head_dim": 128}
SMOKE = {"rows": 40, "hidden": 48, "intermediate": 80, "heads": 3, "kv_heads": 1, "head_dim": 16}
CALLS_PER_STEP = {"rms_norm": 2 * 28 + 1, "swiglu": 28, "rotary_q": 28, "rotary_k": 28}
"""How often one training step of InternVL3-2B's 28-layer language model runs each op."""
MIN_ACCESSES_PER_ELEMENT = {"rms_norm": 5, "swiglu": 8, "rotary_q": 4, "rotary_k": 4}
"""Times forward + backward must at least read or write each element of the op's output."""
REPS = 2
KERNEL_CALLS = 20
"""Calls profiled for the kernel-time columns."""


def problems(shape: dict, device: str, dtype: torch.dtype) -> dict[str, tuple]:
    """op -> (its inputs, the gradient of its output, the fused call, the eager one)."""
    gen = torch.Generator().manual_seed(0)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen).to(device, dtype)

    rows, hidden, inner, head_dim = shape["rows"], shape["hidden"], shape["intermediate"], shape["head_dim"]
    angles = torch.rand(1, rows, head_dim // 2, generator=gen).repeat(1, 1, 2) * 100
    cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)
    out = {"rms_norm": ([rand(rows, hidden), rand(hidden)], rand(rows, hidden),
                        functools.partial(rms_norm, eps=1e-6), functools.partial(rms_norm_reference, eps=1e-6)),
           "swiglu": ([rand(rows, inner), rand(rows, inner)], rand(rows, inner), swiglu, swiglu_reference)}
    for op, heads in (("rotary_q", shape["heads"]), ("rotary_k", shape["kv_heads"])):
        out[op] = ([rand(1, rows, heads, head_dim).transpose(1, 2)], rand(1, heads, rows, head_dim),
                   lambda x: rotary(x, cos, sin), lambda x: rotary_reference(x, cos, sin))
    return out


def contenders(kernel: Callable, reference: Callable, cuda: bool) -> dict[str, Callable | str]:
    return {"triton": kernel, "eager": reference,
            "compile": torch.compile(reference, dynamic=False) if cuda
            else "skipped on CPU (compiling takes about a minute)"}


def training_call(fn: Callable, inputs: list[torch.Tensor], grad: torch.Tensor) -> Callable[[], None]:
    leaves = [t.detach().requires_grad_() for t in inputs]

    def call() -> None:
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves).backward(grad)
    return call


def run(smoke: bool = False, dtype: str = "bf16", out_dir: Path | None = None) -> tuple[Path, list[dict]]:
    cuda = torch.cuda.is_available() and not smoke
    shape, torch_dtype = (FULL, {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]) if cuda else (SMOKE,
                                                                                                      torch.float32)
    device = device_name() if cuda else "cpu"
    peak = peak_bandwidth(device) if cuda else None
    rows = []
    for op, (inputs, grad, kernel, reference) in problems(shape, "cuda" if cuda else "cpu", torch_dtype).items():
        moved = MIN_ACCESSES_PER_ELEMENT[op] * grad.numel() * grad.element_size()
        timed: dict[str, float] = {}
        for name, fn in contenders(kernel, reference, cuda).items():
            row = {"op": op, "impl": name, "rows": shape["rows"], "features": grad.shape[-1]}
            if isinstance(fn, str):
                rows.append({**row, "note": fn})
                continue
            call = training_call(fn, inputs, grad)
            with environment("TRITON_INTERPRET", "1" if name == "triton" and not cuda else None):
                ms, _ = time_ms(call, cuda, REPS)
            timed[name] = ms
            row.update({"ms": ms, "GB/s": moved / ms / 1e6, "ms per step": ms * CALLS_PER_STEP[op]})
            if cuda:
                kernels = kernel_ms(call, KERNEL_CALLS)
                row.update({"kernel ms": kernels, "kernel GB/s": moved / kernels / 1e6})
                if peak:
                    row["kernels' % of peak bandwidth"] = f"{moved / kernels / 1e6 / peak:.0%}"
            rows.append(row)
        for row in rows:
            if row["op"] == op and "ms" in row:
                row.update({f"x_vs_{base}": timed[base] / row["ms"] for base in ("eager", "compile") if base in timed})
    notes = [f"`python -m benchmarks.fused_lm_ops{' --smoke' if smoke else ''}`: forward + backward of one call, "
             f"{dtype if cuda else 'fp32'}; " + ("median of triton.testing.do_bench (L2 flushed)" if cuda else
                                                 "median of 2 runs, Triton in its CPU interpreter (not a speed)"),
             "GB/s: the bytes forward + backward must move at least (RMSNorm 10 B, SwiGLU 16 B, rotary 8 B per "
             "element of 2-byte activations) over the time; ms per step: times the calls in one training step of "
             "the 28-layer LM (57 RMSNorms, 28 SwiGLUs, 28 rotations of q and of k)",
             "kernel ms (GPU): the time the call's kernels ran, from torch.profiler over "
             f"{KERNEL_CALLS} calls; ms, timed with events, also holds the gaps while the host launches them, "
             "which for the small calls is most of it"]
    metrics = {f"{r['op']}_{r['impl']}_ms": r["ms"] for r in rows if "ms" in r}
    md = write_results("fused_lm_ops", rows, title="Fused RMSNorm, SwiGLU and rotary against eager and torch.compile",
                       device=device, notes=notes, out_dir=out_dir, mlflow_metrics=metrics)
    return md, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fused_lm_ops", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, Triton in the interpreter")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    md, _ = run(args.smoke, args.dtype, args.out)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
