"""Chunk-mask attention, side by side: our Triton kernel, FlexAttention, SDPA, flash-attn and eager PyTorch.

    python -m benchmarks.attention            # GPU: bf16, InternVL3-2B's LM heads (12 q / 2 kv x 128) and
                                              # 24 q / 4 kv x 64, rows of 2k-16k tokens, 16k tokens per batch
    python -m benchmarks.attention --smoke    # seconds, any device: tiny rows (the tests run this on CPU)

Rows are packed from JALA-shaped documents: ``<img>`` 256 image tokens ``</img>``, ~60 instruction tokens, then
``<mot>`` 128 motion tokens ``</mot>`` per chunk (two hands, one or two chunks each, the chunk mask
bidirectional inside each run of 128), padding after the last document that fits. Every backend gets the
same q/k/v; forward and forward+backward times are medians (``triton.testing.do_bench`` on GPU), and TFLOP/s
count only useful work: 4 * D * Hq FLOPs per visible (query, key) pair forward, 2.5x that backward. Masks
are built once per batch, as in training (one batch serves every layer): their build time is its own column.
Results: a dated markdown table and plot in ``benchmarks/results/`` and an MLflow run (``report.py``).
"""
from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.report import device_name, write_results
from jala_ds.bench.tables import markdown_table
from jala_ds.model.chunk_mask_attention import chunk_block_mask, dense_chunk_mask
from jala_kernels import chunk_attention, chunk_attention_bounds, chunk_attention_reference
from jala_kernels.chunk_attention_bounds import visible_pairs

TOKENS_PER_BATCH = 16384
SEQ_LENS = (2048, 4096, 8192, 16384)
HEADS = ((12, 2, 128), (24, 4, 64))
"""(query heads, KV heads, head dim): InternVL3-2B's language model, and the same width at head dim 64."""


def heads_arg(text: str) -> tuple[int, int, int]:
    """``--heads 12/2/128``: query heads, KV heads, head dim."""
    parts = text.split("/")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts) or int(parts[0]) % int(parts[1]):
        raise argparse.ArgumentTypeError(f"--heads {text}: give QUERY/KV/DIM with KV dividing QUERY, e.g. 12/2/128")
    heads_q, heads_kv, head_dim = (int(p) for p in parts)
    return heads_q, heads_kv, head_dim


@dataclass(frozen=True)
class SampleShape:
    """Token counts of one packed document."""

    image_tokens: int = 256
    text_tokens: tuple[int, int] = (40, 80)
    chunk_tokens: int = 128
    chunks_per_hand: tuple[int, ...] = (1, 1, 1, 2)
    """Drawn uniformly: mostly one chunk per hand (a ~576-token sample), sometimes two."""
    one_hand_probability: float = 0.2


SMOKE_SAMPLE = SampleShape(image_tokens=12, text_tokens=(3, 8), chunk_tokens=6)


def document(rng: random.Random, shape: SampleShape) -> tuple[int, list[tuple[int, int]]]:
    """One document: its length and its motion chunks as (offset, length)."""
    pos = shape.image_tokens + 2 + rng.randint(*shape.text_tokens)  # <img> ... </img> instruction
    hands = 1 if rng.random() < shape.one_hand_probability else 2
    chunks = []
    for _ in range(hands * rng.choice(shape.chunks_per_hand)):  # L1 R1 L2 R2 ...
        chunks.append((pos + 1, shape.chunk_tokens))  # the chunk is the codes between <mot> and </mot>
        pos += shape.chunk_tokens + 2
    return pos, chunks


def packed_layout(batch: int, n: int, shape: SampleShape, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """doc_ids, chunk_ids int32 ``[batch, n]``: documents packed greedily; one that does not fit opens a row."""
    rng = random.Random(seed)
    doc_ids = torch.full((batch, n), -1, dtype=torch.int32)
    chunk_ids = torch.full((batch, n), -1, dtype=torch.int32)
    pending = document(rng, shape)
    for row in range(batch):
        pos, doc, chunk = 0, 0, 0
        while pos + pending[0] <= n:
            length, chunks = pending
            doc_ids[row, pos:pos + length] = doc
            for offset, size in chunks:
                chunk_ids[row, pos + offset:pos + offset + size] = chunk
                chunk += 1
            pos, doc, pending = pos + length, doc + 1, document(rng, shape)
    return doc_ids, chunk_ids


@dataclass
class Backend:
    """One way to compute attention on the benchmark's q/k/v (and the mask work it needs)."""

    name: str
    key: str
    """Short name for MLflow metrics."""
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    pairs: int
    """Visible (query, key) pairs per head it computes: the chunk mask's, or its own mask's (the proxies)."""
    chunk_mask: bool = True
    """Computes the chunk mask (its output is compared with ours)."""
    mask_build: Callable[[], object] | None = None
    inputs: Callable[[torch.Tensor], torch.Tensor] | None = None
    """Maps each of q/k/v (and dO) to the layout it takes; the [B, H, N, D] tensors themselves by default."""


def backends(doc_ids: torch.Tensor, chunk_ids: torch.Tensor, scale: float) -> list[Backend]:
    """Every backend available here, ours first, with the masks built once for this batch."""
    from torch.nn.attention.flex_attention import flex_attention

    batch, n = doc_ids.shape
    on_gpu = doc_ids.is_cuda
    chunk_pairs = visible_pairs(chunk_attention_bounds(doc_ids, chunk_ids))

    def sdpa(q, k, v, **mask):
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True, **mask)

    block_mask, mask = chunk_block_mask(doc_ids, chunk_ids), dense_chunk_mask(doc_ids, chunk_ids)
    # Without torch.compile FlexAttention materialises the scores; there is no compiled CPU backward.
    flex = torch.compile(flex_attention, dynamic=False) if on_gpu else flex_attention
    found = [
        Backend("chunk_attention (ours)", "ours", lambda q, k, v: chunk_attention(q, k, v, doc_ids, chunk_ids, scale),
                chunk_pairs, mask_build=lambda: chunk_attention_bounds(doc_ids, chunk_ids)),
        Backend("flex, cached BlockMask" + ("" if on_gpu else " (eager)"), "flex",
                lambda q, k, v: flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True),
                chunk_pairs, mask_build=lambda: chunk_block_mask(doc_ids, chunk_ids)),
        Backend("sdpa, dense bool mask", "sdpa_mask", lambda q, k, v: sdpa(q, k, v, attn_mask=mask), chunk_pairs,
                mask_build=lambda: dense_chunk_mask(doc_ids, chunk_ids)),
        Backend("sdpa causal, whole rows (no docs, no chunks)", "sdpa_causal_rows",
                lambda q, k, v: sdpa(q, k, v, is_causal=True), batch * n * (n + 1) // 2, chunk_mask=False),
        document_rows_causal(doc_ids, sdpa),
        Backend("eager pytorch (reference)", "eager",
                lambda q, k, v: chunk_attention_reference(q, k, v, doc_ids, chunk_ids, scale), chunk_pairs),
    ]
    varlen = flash_attn_varlen(doc_ids, scale)
    return found[:5] + ([varlen] if varlen is not None else []) + found[5:]


def document_rows_causal(doc_ids: torch.Tensor, sdpa: Callable) -> Backend:
    """SDPA causal (its flash kernel) on the batch's tokens re-cut into rows of the mean document length:
    the speed-of-light proxy when flash-attn is not installed (same tokens, about the same causal pairs)."""
    docs = int(sum(len(torch.unique(row[row >= 0])) for row in doc_ids))
    length = int((doc_ids >= 0).sum()) // docs

    def rows(t: torch.Tensor) -> torch.Tensor:  # [B, H, N, D] -> [docs, H, length, D]
        tokens = t.transpose(1, 2).flatten(0, 1)[:docs * length]
        return tokens.unflatten(0, (docs, length)).transpose(1, 2).contiguous()

    return Backend("sdpa causal, document-length rows (no chunks)", "sdpa_causal_docs",
                   lambda q, k, v: sdpa(q, k, v, is_causal=True), docs * length * (length + 1) // 2,
                   chunk_mask=False, inputs=rows)


def flash_attn_varlen(doc_ids: torch.Tensor, scale: float) -> Backend | None:
    """flash-attn's varlen causal kernel over the documents (no chunks): the speed-of-light proxy."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    batch, n = doc_ids.shape
    rows = torch.arange(batch, device=doc_ids.device)[:, None].expand(batch, n)
    keep = (doc_ids >= 0).flatten()
    _, lengths = torch.unique_consecutive((rows * n + doc_ids).flatten()[keep], return_counts=True)
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    longest = int(lengths.max())

    def unpad(t: torch.Tensor) -> torch.Tensor:  # [B, H, N, D] -> [tokens, H, D]
        return t.transpose(1, 2).flatten(0, 1)[keep].contiguous()

    return Backend("flash-attn varlen causal per document (no chunks)", "flash_varlen",
                   lambda q, k, v: flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, longest, longest,
                                                          softmax_scale=scale, causal=True),
                   int((lengths * (lengths + 1) // 2).sum()), chunk_mask=False, inputs=unpad)


def median_ms(fn: Callable[[], object], grads: list[torch.Tensor], repeats: int) -> float:
    """Median wall time of ``fn`` in ms; on GPU ``triton.testing.do_bench`` (L2 flushed, grads reset)."""
    if torch.cuda.is_available():
        from triton.testing import do_bench

        return do_bench(fn, grad_to_none=grads, return_mode="median")
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        for t in grads:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times[1:])[len(times[1:]) // 2]


def measure(backend: Backend, q, k, v, grad_out, expected: torch.Tensor, valid: torch.Tensor, repeats: int,
            tolerate_errors: bool) -> dict[str, object]:
    """Forward and forward+backward times, TFLOP/s and the largest difference from our output.

    With ``tolerate_errors`` a failure (out of memory, no kernel for this case) becomes the row's note
    instead of ending the run: a baseline that cannot run is a result too.
    """
    prepare = backend.inputs or (lambda t: t)
    leaves = [prepare(t).detach().requires_grad_() for t in (q, k, v)]
    grad = prepare(grad_out)
    fwd_flops = 4 * backend.pairs * q.shape[1] * q.shape[-1]
    row: dict[str, object] = {"backend": backend.name}
    frozen = [t.detach() for t in leaves]  # eager FlexAttention refuses inputs that require grad on CPU
    try:
        with torch.no_grad():
            fwd_ms = median_ms(lambda: backend.attend(*frozen), [], repeats)
            out = backend.attend(*frozen).float()
        row.update({"fwd ms": fwd_ms, "fwd TFLOP/s": fwd_flops / fwd_ms / 1e9})
        if backend.chunk_mask:
            row["max abs diff vs ours"] = float(((out - expected).abs() * valid).max())
        train_ms = median_ms(lambda: backend.attend(*leaves).backward(grad), leaves, repeats)
        row.update({"fwd+bwd ms": train_ms, "fwd+bwd TFLOP/s": 3.5 * fwd_flops / train_ms / 1e9})
    except Exception as err:
        if not tolerate_errors:
            raise
        row["note"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:100]}"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if backend.mask_build is not None:
        row["mask build ms"] = median_ms(backend.mask_build, [], repeats)
    return row


def run_shape(n: int, heads: tuple[int, int, int], tokens: int, sample: SampleShape, device: str,
              dtype: torch.dtype, repeats: int) -> list[dict[str, object]]:
    """All backends on one (sequence length, heads) shape; rows carry the ratios to our kernel."""
    heads_q, heads_kv, head_dim = heads
    batch = max(1, tokens // n)
    doc_ids, chunk_ids = (t.to(device) for t in packed_layout(batch, n, sample, seed=n))
    gen = torch.Generator(device=device).manual_seed(n + head_dim)
    q, k, v = (torch.randn(batch, h, n, head_dim, device=device, dtype=dtype, generator=gen)
               for h in (heads_q, heads_kv, heads_kv))
    grad_out = torch.randn_like(q)
    scale = head_dim ** -0.5
    with torch.no_grad():
        expected = chunk_attention(q, k, v, doc_ids, chunk_ids, scale).float()
    valid = (doc_ids >= 0)[:, None, :, None]
    shape = {"N": n, "B": batch, "heads q/kv x D": f"{heads_q}/{heads_kv} x {head_dim}"}
    rows = [dict(shape, key=b.key, **measure(b, q, k, v, grad_out, expected, valid, repeats, tolerate_errors=i > 0))
            for i, b in enumerate(backends(doc_ids, chunk_ids, scale))]
    ours = rows[0]
    for row in rows:
        for key in ("fwd ms", "fwd+bwd ms"):
            if key in row and key in ours:
                row[f"{key.split()[0]} x ours"] = row[key] / ours[key]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny rows and few repeats (seconds, any device)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=SEQ_LENS, help="GPU sequence lengths (default: "
                        f"{' '.join(map(str, SEQ_LENS))})")
    parser.add_argument("--heads", type=heads_arg, nargs="+", default=HEADS, help="GPU head shapes as QUERY/KV/DIM "
                        f"(default: {' '.join('/'.join(map(str, h)) for h in HEADS)})")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        plan = [(128, (4, 2, 16), 256)]
        sample, repeats = SMOKE_SAMPLE, 2
    else:
        if device == "cpu":
            parser.error("the full benchmark needs a CUDA GPU; on CPU run --smoke")
        dtype, sample, repeats = torch.bfloat16, SampleShape(), 3
        plan = [(n, heads, TOKENS_PER_BATCH) for heads in args.heads for n in args.seq_lens]

    rows = []
    for n, heads, tokens in plan:
        shape_rows = run_shape(n, heads, tokens, sample, device, dtype, repeats)
        rows += shape_rows
        # Each shape's table as it finishes: a run stopped by a time limit keeps what it measured.
        print(f"done: N={n}, heads {heads}\n{markdown_table(shape_rows)}", flush=True)
    notes = [f"dtype {str(dtype).removeprefix('torch.')}, {'smoke run' if args.smoke else 'full run'}",
             "`x ours` = this backend's time / our kernel's time (above 1: ours is faster)",
             ("targets: fwd+bwd >= 1.3x faster than flex with a cached BlockMask, and within 1.25x of causal flash "
              "attention over the same documents without chunks (flash-attn varlen when installed, else SDPA "
              "causal on document-length rows)"),
             ("TFLOP/s count each backend's own visible pairs (the causal proxies compute more or fewer pairs "
              "than the chunk mask)")]
    path = write_results("attention", rows, title="chunk-mask attention: forward and forward+backward",
                         device=device_name(), notes=notes, out_dir=args.out, figure=throughput_figure(rows),
                         mlflow_metrics=ratio_metrics(rows))
    print(path.read_text())
    return 0


def ratio_metrics(rows: list[dict[str, object]]) -> dict[str, float]:
    """MLflow metrics: each backend's fwd+bwd time relative to ours, per shape."""
    return {f"fwdbwd_x_ours_{row['key']}_N{row['N']}_D{row['heads q/kv x D'].split()[-1]}": row["fwd+bwd x ours"]
            for row in rows if "fwd+bwd x ours" in row}


def throughput_figure(rows: list[dict[str, object]]):
    """fwd+bwd TFLOP/s against sequence length, one panel per head shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(row["heads q/kv x D"] for row in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for name in dict.fromkeys(row["backend"] for row in rows):
            points = [(row["N"], row["fwd+bwd TFLOP/s"]) for row in rows
                      if row["heads q/kv x D"] == shape and row["backend"] == name and "fwd+bwd TFLOP/s" in row]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ax.set(title=f"heads {shape}", xlabel="tokens per row", ylabel="fwd+bwd TFLOP/s (useful)")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
