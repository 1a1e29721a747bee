"""GRVQ encode and decode: the fused Triton kernels against eager PyTorch, torch.compile and vector-quantize-pytorch.

    python -m benchmarks.grvq                  # GPU: N = 16k..1M vectors, D=512, G=2, R=8, K=512 and 4096, bf16
    python -m benchmarks.grvq --dtype fp32     # fp32 inputs (TF32 allowed for every contender alike)
    python -m benchmarks.grvq --smoke          # tiny CPU run (Triton in the interpreter): what the tests call

All contenders run side by side in one process on the same inputs. Encode: ms, effective GB/s (x in, codes and
quantized out, codebooks once), TFLOP/s of the distance dot products (2 N K D R) and speed-ups over eager and
torch.compile; the Triton codes are compared with eager's (in bf16 a few near-ties may round differently).
Decode: ms, GB/s and the share of the card's peak memory bandwidth. On CPU the run also measures the motion
tokenizer's corpus throughput (``tokenize_corpus``, clips/s). Results: a dated markdown table + PNG in
benchmarks/results/ and the ``benchmarks`` MLflow experiment (``benchmarks.report.write_results``).
Targets (DESIGN.md): encode >= 4x eager and >= 1.5x torch.compile; decode >= 70% of peak bandwidth.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.report import device_name, write_results
from benchmarks.timing import environment, peak_bandwidth, time_ms
from jala_kernels import grvq_decode_reference, grvq_encode_reference

FULL_SHAPES = {"n": (16_384, 131_072, 1_048_576), "k": (512, 4096), "d": 512, "groups": 2, "stages": 8}
SMOKE_SHAPES = {"n": (16, 32), "k": (16,), "d": 32, "groups": 2, "stages": 2}
REPS = 2
"""Timed runs per contender on CPU (the GPU uses do_bench's own count)."""
@contextlib.contextmanager
def tf32_matmuls(allowed: bool):
    """fp32 runs let every contender use TF32 tensor cores alike (the Triton kernel follows the same switch)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def vqp_contenders(codebooks: torch.Tensor) -> dict[str, Callable] | None:
    """vector-quantize-pytorch's GroupedResidualVQ holding our codebooks, or None when it is not installed."""
    try:
        from vector_quantize_pytorch import GroupedResidualVQ
    except ImportError:
        return None
    groups, stages, k, group_dim = codebooks.shape
    vq = GroupedResidualVQ(dim=groups * group_dim, groups=groups, num_quantizers=stages, codebook_size=k)
    vq = vq.to(codebooks.device, codebooks.dtype).eval()
    with torch.no_grad():
        for g, rvq in enumerate(vq.rvqs):
            for r, layer in enumerate(rvq.layers):
                layer._codebook.embed.copy_(codebooks[g, r][None])
    return {"encode": lambda x: vq(x[None])[:2], "decode": lambda idx: vq.get_output_from_indices(idx)}


def bound(fn: Callable, codebooks: torch.Tensor, first_only: bool) -> Callable:
    """``fn(arg, codebooks)`` as ``f(arg)``; ``first_only`` keeps the codes of an encoder's (codes, quantized)."""
    return (lambda arg: fn(arg, codebooks)[0]) if first_only else (lambda arg: fn(arg, codebooks))


def contenders(op: str, codebooks: torch.Tensor, cpu: bool) -> dict[str, Callable | str]:
    """name -> ``fn(x) -> codes`` for encode, ``fn(codes) -> quantized`` for decode, or why it does not run."""
    from jala_kernels.grvq_triton import grvq_decode_triton, grvq_encode_triton

    encode = op == "encode"
    reference = grvq_encode_reference if encode else grvq_decode_reference
    out: dict[str, Callable | str] = {
        "triton": bound(grvq_encode_triton if encode else grvq_decode_triton, codebooks, encode),
        "eager": bound(reference, codebooks, encode),
        "compile": "skipped on CPU (compiling takes about a minute)" if cpu
        else bound(torch.compile(reference, dynamic=False), codebooks, encode),
    }
    vqp = vqp_contenders(codebooks)
    if vqp is None:
        out["vector-quantize-pytorch"] = "not installed"
    elif encode:
        out["vector-quantize-pytorch"] = vqp["encode"]
    else:  # its indices are [G, batch, N, R]
        out["vector-quantize-pytorch"] = lambda codes: vqp["decode"](codes.permute(1, 0, 2)[:, None])
    return out


def measure(op: str, contenders: dict[str, Callable | str], arg: torch.Tensor, shape: dict, moved_bytes: float,
            flops: float, cuda: bool, reps: int, reference_codes: torch.Tensor | None) -> list[dict]:
    rows = []
    for name, fn in contenders.items():
        row = {"op": op, "N": shape["n"], "K": shape["k"], "impl": name}
        if isinstance(fn, str):
            rows.append({**row, "note": fn})
            continue
        try:
            with environment("TRITON_INTERPRET", "1" if name == "triton" and not cuda else None):
                ms, out = time_ms(functools.partial(fn, arg), cuda, reps)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append({**row, "note": "out of memory"})
            continue
        row.update({"ms": ms, "GB/s": moved_bytes / ms / 1e6})
        if flops:
            row["TFLOP/s"] = flops / ms / 1e9
        if reference_codes is not None and name == "triton":
            row["codes_agree"] = float((out == reference_codes).float().mean())
        rows.append(row)
    timed = {r["impl"]: r["ms"] for r in rows if "ms" in r}
    for r in rows:
        if "ms" in r:
            r.update({f"x_vs_{base}": timed[base] / r["ms"] for base in ("eager", "compile") if base in timed})
    return rows


def benchmark_kernels(cuda: bool, dtype: torch.dtype, shapes: dict) -> list[dict]:
    """Every contender on every shape of ``shapes`` (``FULL_SHAPES`` on a GPU, ``SMOKE_SHAPES`` on a CPU)."""
    device = "cuda" if cuda else "cpu"
    d, groups, stages = shapes["d"], shapes["groups"], shapes["stages"]
    gen = torch.Generator(device).manual_seed(0)
    rows = []
    for k in shapes["k"]:
        codebooks = torch.randn(groups, stages, k, d // groups, device=device, generator=gen).to(dtype)
        encoders, decoders = contenders("encode", codebooks, not cuda), contenders("decode", codebooks, not cuda)
        for n in shapes["n"]:
            x = torch.randn(n, d, device=device, generator=gen).to(dtype)
            codes = grvq_encode_reference(x, codebooks)[0]
            size = x.element_size()
            book_bytes = codebooks.numel() * size
            shape = {"n": n, "k": k}
            rows += measure("encode", encoders, x, shape, 2 * n * d * size + codes.numel() * 8 + book_bytes,
                            2.0 * n * k * d * stages, cuda, REPS, codes)
            rows += measure("decode", decoders, codes, shape, n * d * size + codes.numel() * 8 + book_bytes,
                            0.0, cuda, REPS, None)
            del x, codes
    return rows


def tokenizer_throughput(smoke: bool) -> dict:
    """clips/s of ``tokenize_corpus`` with a freshly initialised tokenizer (the paper's sizes unless --smoke)."""
    from jala_ds.motion.config import TokenizerConfig
    from jala_ds.motion.corpus_tokenize import tokenize_corpus
    from jala_ds.motion.synthetic import write_pose_corpus
    from jala_ds.motion.tokenizer import save_tokenizer
    from jala_ds.motion.tokenizer_model import MotionTokenizerModel

    cfg = TokenizerConfig(groups=2, stages=2, codes_per_stage=16, latent_dim=32, conv_width=32) if smoke \
        else TokenizerConfig()
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        mds = write_pose_corpus(Path(tmp) / "mds", lab=8 if smoke else 192, wild=4 if smoke else 64, frames=45,
                                seed=0)
        model = MotionTokenizerModel(cfg, 15, torch.zeros(99), torch.ones(99))
        checkpoint = save_tokenizer(model, Path(tmp) / "tokenizer", {"steps": 0})
        report = tokenize_corpus(checkpoint, mds, Path(tmp) / "out", device=device)
    return {"op": "tokenize_corpus", "N": report["clips"], "K": cfg.codes_per_stage, "impl": f"tokenizer ({device})",
            "clips/s": report["clips_per_s"], "note": f"{report['chunks']} chunks, G={cfg.groups} R={cfg.stages}"}


def figure(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["K"] for r in rows if r["op"] == "encode"})
    fig, axes = plt.subplots(2, len(ks), figsize=(5 * len(ks), 7), squeeze=False)
    for col, k in enumerate(ks):
        for row, (op, metric) in enumerate((("encode", "ms"), ("decode", "GB/s"))):
            ax = axes[row][col]
            for impl in dict.fromkeys(r["impl"] for r in rows if r["op"] == op):
                points = [(r["N"], r[metric]) for r in rows if (r["op"], r["K"], r["impl"]) == (op, k, impl)
                          and metric in r]
                if points:
                    ax.plot(*zip(*points), marker="o", label=impl)
            ax.set(xscale="log", yscale="log" if metric == "ms" else "linear", xlabel="N vectors",
                   ylabel=metric, title=f"{op}, K={k}")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run(smoke: bool = False, dtype: str = "bf16", out_dir: Path | None = None,
        sizes: dict[str, tuple[int, ...]] | None = None, corpus: bool = True) -> tuple[Path, list[dict]]:
    """Run the benchmark and write the results; returns the markdown file and the table's rows. ``sizes`` narrows
    the GPU shapes (``{"n": (...), "k": (...)}``) when a lease is short.

    Without a GPU (or with ``smoke``) the kernels run at the smoke sizes in fp32, Triton in the interpreter
    (its bf16 dot is broken); the tokenizer's corpus throughput uses the paper's tokenizer sizes unless ``smoke``.
    """
    cuda = torch.cuda.is_available() and not smoke
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype] if cuda else torch.float32
    with tf32_matmuls(torch_dtype == torch.float32 and cuda):
        shapes = {**FULL_SHAPES, **(sizes or {})} if cuda else SMOKE_SHAPES
        rows = benchmark_kernels(cuda, torch_dtype, shapes)
    if corpus:
        rows.append(tokenizer_throughput(smoke))
    device = device_name()
    peak = peak_bandwidth(device)
    if peak:
        for r in rows:
            if r["op"] == "decode" and "GB/s" in r:
                r["pct_peak_bw"] = 100 * r["GB/s"] / peak
    notes = [f"D={shapes['d']}, G={shapes['groups']}, R={shapes['stages']}, {str(torch_dtype).split('.')[-1]}",
             "ms: median; GB/s: x + codes + quantized (+ codebooks once) over time; TFLOP/s: 2 N K D R / time",
             "codes_agree: share of Triton codes equal to eager's",
             "targets: encode >= 4x eager and >= 1.5x compile; decode >= 70% of peak bandwidth"
             + (f" ({peak} GB/s)" if peak else " (peak of this device unknown)")]
    if not cuda:
        notes.append("CPU run: Triton runs in the interpreter, so kernel timings say nothing about GPU speed")
    metrics = {f"{r['op']}_{r['impl']}_N{r['N']}_K{r['K']}_ms": r["ms"] for r in rows if "ms" in r}
    metrics.update({"tokenize_clips_per_s": r["clips/s"] for r in rows if r["op"] == "tokenize_corpus"})
    title = "GRVQ encode / decode" + ("" if cuda else " (CPU smoke sizes)")
    md = write_results("grvq", rows, title=title, device=device, notes=notes, figure=figure(rows),
                       out_dir=out_dir, mlflow_metrics=metrics)
    return md, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grvq", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU configuration (what the tests run)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="input and codebook dtype")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--n", type=int, nargs="+", default=None, help="GPU vector counts (default: all)")
    parser.add_argument("--k", type=int, nargs="+", default=None, help="GPU codebook sizes (default: all)")
    parser.add_argument("--kernels-only", action="store_true", help="leave out the corpus tokenization row")
    args = parser.parse_args(argv)
    sizes = {key: tuple(value) for key, value in (("n", args.n), ("k", args.k)) if value}
    print(f"results: {run(args.smoke, args.dtype, args.out, sizes, corpus=not args.kernels_only)[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
