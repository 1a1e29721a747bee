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

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.host_overhead import CONFIGS, scaled_ds_config
from benchmarks.report import device_name, write_results

NARROW = ["model.arch=internvl3_2b_narrow", "model.align_layer=19", "model.pretrained=null",
          "model.visual_encoder_path=null", "train.micro_batch_size=16", "train.global_batch_size=16",
          "train.grad_accum_steps=1", "train.dtype=bf16"]


class OperatorCount(TorchDispatchMode):
    """Counts the operators that reach a backend (what a GPU would launch kernels for)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def build(multi_tensor: bool, scratch: Path):
    from jala_ds.config import load_config
    from jala_ds.model.build import build_model
    from jala_ds.train.ds_config import build_ds_config
    from jala_ds.train.engine import build_engine
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    override = scaled_ds_config(CONFIGS / "zero2.json", scratch, "zero2")
    cfg = load_config("tiny_cpu", [*NARROW, override, f"train.multi_tensor_grad_checks={str(multi_tensor).lower()}"])
    vocab = add_motion_vocab(load_text_tokenizer(None, cfg.model.arch), cfg.motion_tokenizer.vocab_per_part)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, vocab).to(torch.bfloat16)
    return build_engine(model, build_ds_config(cfg.train, world_size=1), cfg.train, total_steps=1000)


def give_gradients(engine) -> None:
    params = [param for param in engine.module.parameters() if param.requires_grad]
    engine.backward(torch.stack([param.float().square().sum() for param in params]).sum() * 1e-3)


def clock(device: torch.device) -> float:
    """This process's CPU seconds on a CPU (less disturbed by the machine's other tenants); on a GPU, wall
    seconds once the queued kernels have run."""
    if device.type != "cuda":
        return time.process_time()
    torch.cuda.synchronize(device)
    return time.perf_counter()


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
        engines = {"DeepSpeed's checks": build(False, Path(tmp)), "multi-tensor checks": build(True, Path(tmp))}
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
             f"ms per step: fastest of {rounds} interleaved rounds of {steps} steps; "
             + ("wall time" if torch.cuda.is_available() else "this process's CPU time")]
    path = write_results("zero_grad_checks", rows, title="ZeRO-2 optimiser step: gradient checks",
                         device=device_name(), notes=notes, out_dir=out_dir)
    print(path.read_text())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the fastest counts")
    parser.add_argument("--steps", type=int, default=5, help="timed optimiser steps per round and variant")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/)")
    args = parser.parse_args(argv)
    run(args.rounds, args.steps, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
