"""The LM head's matrix products at the MCP loss positions: with one row per token of the full vocabulary, and with
the rows rounded up to a multiple of 64 as the model builds them (``jala_ds/vocab.py``).

    python -m benchmarks.lm_head            # GPU: InternVL3-2B's head (159,869 tokens, 1536 features), bf16
    python -m benchmarks.lm_head --smoke    # tiny CPU run: what the tests call

An H200 profile of the full recipe (2026-11-27) showed a Turing-generation cuBLAS kernel taking 4.8 ms once per
step, about ten times what a product of the head's size needs there: the head's, whose odd row count leaves its
operands' leading dimensions unaligned for the Hopper kernels. Both heads run the training call: logits at the
loss positions, cut to the vocabulary, backward into the hidden states and the weight. Per head: ms, TFLOP/s
over the three products' FLOPs, and the speed-up of the padded head over the unpadded one. Results: a dated
markdown table in benchmarks/results/ and the ``benchmarks`` MLflow experiment.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.report import device_name, write_results
from benchmarks.timing import time_ms
from jala_ds.vocab import embedding_rows

FULL = {"positions": 920, "hidden": 1536, "vocab": 159_869}
"""A full-recipe micro-step's MCP positions (docs/performance.md, section 1) and InternVL3-2B's head."""
SMOKE = {"positions": 24, "hidden": 32, "vocab": 327}
REPS = 3


def training_call(hidden: torch.Tensor, weight: torch.Tensor, vocab: int,
                  grad: torch.Tensor) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """The head's forward and backward as ``mcp_loss`` runs them; returns the logits and the hidden states'
    gradient."""
    leaves = [hidden.detach().requires_grad_(), weight.detach().requires_grad_()]

    def call() -> tuple[torch.Tensor, torch.Tensor]:
        for leaf in leaves:
            leaf.grad = None
        logits = F.linear(leaves[0], leaves[1])[:, :vocab]
        logits.backward(grad)
        return logits.detach(), leaves[0].grad
    return call


def run(smoke: bool = False, out_dir: Path | None = None) -> tuple[Path, list[dict]]:
    cuda = torch.cuda.is_available() and not smoke
    shape, dtype, device = (FULL, torch.bfloat16, "cuda") if cuda else (SMOKE, torch.float32, "cpu")
    positions, features, vocab = shape["positions"], shape["hidden"], shape["vocab"]
    padded = embedding_rows(vocab)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(positions, features, generator=gen).to(device, dtype)
    weight = (torch.randn(padded, features, generator=gen) * features ** -0.5).to(device, dtype)
    grad = torch.randn(positions, vocab, generator=gen).to(device, dtype)
    rows, timed = [], {}
    for name, head_rows in (("one row per token", vocab), ("padded to a multiple of 64", padded)):
        ms, _ = time_ms(training_call(hidden, weight[:head_rows].clone(), vocab, grad), cuda, REPS)
        timed[name] = ms
        flops = 3 * 2 * positions * features * head_rows
        rows.append({"head": name, "rows": head_rows, "positions": positions, "features": features, "ms": ms,
                     "TFLOP/s": flops / ms / 1e9})
    for row in rows:
        row["x_vs_unpadded"] = timed["one row per token"] / row["ms"]
    notes = [f"`python -m benchmarks.lm_head{' --smoke' if smoke else ''}`: forward and backward of the head at "
             f"the loss positions, {'bf16' if cuda else 'fp32'}; "
             + ("median of triton.testing.do_bench (L2 flushed)" if cuda else f"median of {REPS} runs (not a speed)"),
             "TFLOP/s: the three products (logits, gradient of the hidden states, gradient of the weight) over the time"]
    metrics = {"unpadded_ms": timed["one row per token"], "padded_ms": timed["padded to a multiple of 64"]}
    md = write_results("lm_head", rows, title="The LM head with one row per token against rows padded to 64",
                       device=device_name() if cuda else "cpu", notes=notes, out_dir=out_dir, mlflow_metrics=metrics)
    return md, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lm_head", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    md, _ = run(args.smoke, args.out)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
