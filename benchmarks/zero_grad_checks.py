"""ZeRO-2's optimiser step with DeepSpeed's gradient checks and with ours (``jala_ds/train/zero_grad_checks.py``),
side by side at the full recipe's tensor count, on a CPU or a GPU.

    python -m benchmarks.zero_grad_checks                  # ~15 s on 2 CPU cores
    python -m benchmarks.zero_grad_checks --rounds 5 --steps 10

Two engines over ``model.arch=internvl3_2b_narrow`` (InternVL3-2B's depth at tiny width, so the same number of
trainable tensors as the full recipe), bf16, the shipped ``ds_configs/zero2.json`` with its bucket sizes scaled to
the widths, in one process: one with DeepSpeed's per-gradient overflow check and norm, one with the multi-tensor
ones. Each step's gradients come from a backward through the sum of the parameters' squares, which reaches every
parameter through ZeRO-2's hooks without running the model. Only ``engine.step()`` is measured:

- operator calls per optimiser step, counted by a dispatch mode: the same on any machine, and on a GPU each
  one is a kernel launch and its host-side set-up;
- milliseconds per step, fastest of interleaved rounds: the process's CPU time on a CPU, wall time on a GPU.
  The arithmetic is small at these widths, so this is host overhead (on a GPU, with the launches' cost), the
  part of the full recipe's step that sets its pace.
"""
from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

from benchmarks.report import device_name, write_results
from benchmarks.zero2_proxy import OperatorCount, build, clock, command_line, give_gradients, timing_note


def timed_step(engine) -> float:
    give_gradients(engine)
    device = torch.device(engine.device)
    start = clock(device)
    engine.step()
    return clock(device) - start


def operators_per_step(engine) -> Counter[str]:
    give_gradients(engine)
    with OperatorCount() as count:
        engine.step()
    return count.calls


def run(rounds: int, steps: int, out_dir: Path | None) -> list[dict]:
    import torch.distributed as dist

    from jala_ds.train.engine import init_distributed

    if not dist.is_initialized():
        init_distributed()
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"DeepSpeed's checks": build(Path(tmp), "train.multi_tensor_grad_checks=false"),
                   "multi-tensor checks": build(Path(tmp), "train.multi_tensor_grad_checks=true")}
    tensors = sum(param.requires_grad for param in engines["multi-tensor checks"].module.parameters())
    for engine in engines.values():
        timed_step(engine)                            # the first step allocates the optimiser state
    calls = {name: operators_per_step(engine) for name, engine in engines.items()}
    best = {name: float("inf") for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            best[name] = min(best[name], sum(timed_step(engine) for _ in range(steps)) / steps)
    stock = "DeepSpeed's checks"
    rows = [{"gradient checks": name, "operator calls per step": sum(calls[name].values()),
             "ms per step": best[name] * 1e3, "DeepSpeed's / these": best[stock] / best[name]}
            for name in engines]
    fewer = calls[stock] - calls["multi-tensor checks"]
    notes = [f"`python -m benchmarks.zero_grad_checks --rounds {rounds} --steps {steps}`: "
             f"model.arch=internvl3_2b_narrow in bf16, {tensors} trainable tensors (as the full recipe), "
             "ds_configs/zero2.json, one process; only engine.step() is measured",
             "operator calls: every operator that reached a backend during one step (a dispatch mode counts them)",
             "the operators the multi-tensor checks no longer call, per step: "
             + ", ".join(f"{name} {count}" for name, count in fewer.most_common(8)),
             timing_note(rounds, steps, "step")]
    path = write_results("zero_grad_checks", rows, title="ZeRO-2 optimiser step: gradient checks",
                         device=device_name(), notes=notes, out_dir=out_dir)
    print(path.read_text())
    return rows


def main(argv: list[str] | None = None) -> int:
    return command_line(run, __doc__.split("\n\n")[0], "optimiser step", argv)


if __name__ == "__main__":
    sys.exit(main())
