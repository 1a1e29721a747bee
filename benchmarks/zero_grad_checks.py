"""ZeRO-2's optimiser step with DeepSpeed's gradient checks and with ours (``jala_ds/train/zero_grad_checks.py``),
then with the step-end re-pointing of the weights done only when one has moved (``zero_weight_views.py``), then
with the skip decided on the device (``zero_sync_free_step.py``), side by side at the full recipe's tensor count,
on a CPU or a GPU.

    python -m benchmarks.zero_grad_checks                  # ~20 s on 2 CPU cores
    python -m benchmarks.zero_grad_checks --rounds 5 --steps 10

Four engines over the narrow proxy (``benchmarks/zero2_proxy.py``: 847 trainable tensors at tiny width, bf16, the
shipped ZeRO-2 config scaled), in one process: DeepSpeed's per-gradient overflow check and norm and its
re-pointing of every weight after every step; the multi-tensor checks with DeepSpeed's re-pointing; both of ours;
all three of ours (shipped). Only ``engine.step()`` is measured:

- operator calls per optimiser step, counted by a dispatch mode: the same on any machine, and on a GPU each
  one that computes is a kernel launch and its host-side set-up (views launch nothing, yet cost the host);
- reads of a device value to the host per step (``_local_scalar_dense``: ``.item()``, ``bool()`` of a tensor):
  on a GPU each waits for every kernel queued before it, which a CPU cannot show;
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
    stock, checks, repointed, shipped = (
        "DeepSpeed's checks and re-pointing", "multi-tensor checks, DeepSpeed's re-pointing",
        "multi-tensor checks, moved weights re-pointed", "all three, the skip decided on the device (shipped)")
    host_decides = "train.sync_free_step=false"
    with tempfile.TemporaryDirectory() as tmp:
        engines = {stock: build(Path(tmp), "train.multi_tensor_grad_checks=false", host_decides),
                   checks: build(Path(tmp), host_decides),
                   repointed: build(Path(tmp), host_decides),
                   shipped: build(Path(tmp))}
    for name in (stock, checks):     # back to the class's method, which re-points every weight after every step
        del engines[name].optimizer._update_model_bit16_weights
    tensors = sum(param.requires_grad for param in engines[shipped].module.parameters())
    for engine in engines.values():
        timed_step(engine)                            # the first step allocates the optimiser state
    calls = {name: operators_per_step(engine) for name, engine in engines.items()}
    best = {name: float("inf") for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            best[name] = min(best[name], sum(timed_step(engine) for _ in range(steps)) / steps)
    rows = [{"optimiser step": name, "operator calls per step": sum(calls[name].values()),
             "reads to the host per step": calls[name]["_local_scalar_dense"],
             "ms per step": best[name] * 1e3, "DeepSpeed's / this": best[stock] / best[name]}
            for name in engines]
    notes = [f"`python -m benchmarks.zero_grad_checks --rounds {rounds} --steps {steps}`: "
             f"model.arch=internvl3_2b_narrow in bf16, {tensors} trainable tensors (as the full recipe), "
             "ds_configs/zero2.json, one process; only engine.step() is measured",
             "operator calls: every operator that reached a backend during one step (a dispatch mode counts them)",
             "the operators the multi-tensor checks no longer call, per step: "
             + ", ".join(f"{name} {count}" for name, count in (calls[stock] - calls[checks]).most_common(8)),
             "the operators re-pointing only moved weights no longer calls, per step: "
             + ", ".join(f"{name} {count}" for name, count in (calls[checks] - calls[repointed]).most_common(4)),
             "deciding the skip on the device drops DeepSpeed's overflow pass over the gradients (the norm "
             "shows an inf or NaN as well); per step it calls "
             + ", ".join(f"{name} {count:+d}" for name, count in sorted(
                 (name, calls[shipped][name] - calls[repointed][name])
                 for name in calls[shipped] | calls[repointed] if calls[shipped][name] != calls[repointed][name])),
             timing_note(rounds, steps, "step")]
    path = write_results("zero_grad_checks", rows, title="ZeRO-2 optimiser step: gradient checks, weight re-pointing, the skip",
                         device=device_name(), notes=notes, out_dir=out_dir)
    print(path.read_text())
    return rows


def main(argv: list[str] | None = None) -> int:
    return command_line(run, __doc__.split("\n\n")[0], "optimiser step", argv)


if __name__ == "__main__":
    sys.exit(main())
