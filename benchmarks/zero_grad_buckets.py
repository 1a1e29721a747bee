"""ZeRO-2's backward with DeepSpeed's per-parameter gradient reduction and with the bucketed one
(``jala_ds/train/zero_grad_buckets.py``), side by side at the full recipe's tensor count, on a CPU or a GPU.

    python -m benchmarks.zero_grad_buckets                 # ~20 s on 2 CPU cores
    python -m benchmarks.zero_grad_buckets --rounds 5 --steps 10

Two engines over the narrow proxy (``benchmarks/zero2_proxy.py``: 847 trainable tensors at tiny width, bf16,
the shipped ZeRO-2 config scaled), one process, one rank. Each backward runs through the sum of the parameters'
squares, so every gradient goes through the reduction while the arithmetic stays small. Measured per backward:

- operator calls, counted by a dispatch mode (on a GPU each is a kernel launch and its host-side set-up), and
  the same loss's plain autograd backward (``torch.autograd.grad``, which runs no gradient hooks) for reference;
- milliseconds, fastest of interleaved rounds (the process's CPU time on a CPU, wall time on a GPU), and what
  each engine adds to the plain backward: the reduction's own cost.

One rank reduces nothing across ranks: this is the host-side work around the reductions, which is what the
bucketed path removes. Each backward is followed by an untimed optimiser step.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.report import device_name, write_results
from benchmarks.zero2_proxy import OperatorCount, build, clock, command_line, proxy_loss, timing_note, trained

STOCK, BUCKETED = "DeepSpeed's per-parameter reduction", "bucketed reduction"


def timed_backward(engine) -> float:
    loss = proxy_loss(trained(engine))
    device = torch.device(engine.device)
    start = clock(device)
    engine.backward(loss)
    elapsed = clock(device) - start
    engine.step()
    return elapsed


def timed_plain_backward(engine) -> float:
    params = trained(engine)
    loss = proxy_loss(params)
    device = torch.device(engine.device)
    start = clock(device)
    torch.autograd.grad(loss, params)
    return clock(device) - start


def operators_per_backward(engine) -> int:
    loss = proxy_loss(trained(engine))
    with OperatorCount() as count:
        engine.backward(loss)
    engine.step()
    return sum(count.calls.values())


def plain_operators(engine) -> int:
    params = trained(engine)
    loss = proxy_loss(params)
    with OperatorCount() as count:
        torch.autograd.grad(loss, params)
    return sum(count.calls.values())


def run(rounds: int, steps: int, out_dir: Path | None) -> list[dict]:
    import torch.distributed as dist

    from jala_ds.train.engine import init_distributed

    if not dist.is_initialized():
        init_distributed()
    with tempfile.TemporaryDirectory() as tmp:
        engines = {STOCK: build(Path(tmp), "train.bucketed_grad_reduction=false"),
                   BUCKETED: build(Path(tmp), "train.bucketed_grad_reduction=true")}
    assert hasattr(engines[BUCKETED].optimizer, "gradient_buckets") and not hasattr(engines[STOCK].optimizer,
                                                                                     "gradient_buckets")
    reference = engines[STOCK]
    tensors = len(trained(reference))
    buckets = len(engines[BUCKETED].optimizer.gradient_buckets.buckets)
    for engine in engines.values():
        timed_backward(engine)                    # the first step allocates the optimiser state
    calls = {name: operators_per_backward(engine) for name, engine in engines.items()}
    plain_calls = plain_operators(reference)
    best = {name: float("inf") for name in [*engines, "plain"]}
    for _ in range(rounds):
        best["plain"] = min(best["plain"], sum(timed_plain_backward(reference) for _ in range(steps)) / steps)
        for name, engine in engines.items():
            best[name] = min(best[name], sum(timed_backward(engine) for _ in range(steps)) / steps)
    rows = [{"gradient reduction": name, "operator calls per backward": calls[name],
             "beyond plain autograd": calls[name] - plain_calls, "ms per backward": best[name] * 1e3,
             "ms beyond plain autograd": (best[name] - best["plain"]) * 1e3,
             "DeepSpeed's / this (beyond plain)": (best[STOCK] - best["plain"]) / (best[name] - best["plain"])}
            for name in engines]
    rows.append({"gradient reduction": "plain autograd (torch.autograd.grad, no hooks)",
                 "operator calls per backward": plain_calls, "beyond plain autograd": 0,
                 "ms per backward": best["plain"] * 1e3, "ms beyond plain autograd": 0.0,
                 "DeepSpeed's / this (beyond plain)": float("nan")})
    notes = [f"`python -m benchmarks.zero_grad_buckets --rounds {rounds} --steps {steps}`: "
             f"model.arch=internvl3_2b_narrow in bf16, {tensors} trainable tensors (as the full recipe), "
             f"ds_configs/zero2.json with bucket sizes scaled to the widths ({buckets} buckets), one rank; "
             "each backward is through the sum of the parameters' squares",
             "operator calls: every operator that reached a backend during one backward (a dispatch mode counts them)",
             timing_note(rounds, steps, "backward")]
    path = write_results("zero_grad_buckets", rows, title="ZeRO-2 backward: gradient reduction",
                         device=device_name(), notes=notes, out_dir=out_dir)
    print(path.read_text())
    return rows


def main(argv: list[str] | None = None) -> int:
    return command_line(run, __doc__.split("\n\n")[0], "backward", argv)


if __name__ == "__main__":
    sys.exit(main())
