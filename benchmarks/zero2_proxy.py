"""ZeRO-2 engines over the full recipe's parameter count at tiny width, for the benchmarks of ZeRO-2's host-side
work (``zero_grad_checks.py``, ``zero_grad_buckets.py``).

``model.arch=internvl3_2b_narrow`` is InternVL3-2B's depth at tiny width: the full recipe's 847 trainable tensors,
so as many per-tensor hooks, checks and copies, with little arithmetic. The engines run bf16 under the shipped
``ds_configs/zero2.json`` with its bucket sizes scaled to the widths. Gradients come from a backward through the
sum of the parameters' squares, which reaches every parameter through ZeRO-2's hooks without running the model.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.host_overhead import CONFIGS, scaled_ds_config

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


def build(scratch: Path, *overrides: str):
    """A ZeRO-2 bf16 engine over the narrow model, with the tiny recipe's ``overrides`` applied."""
    from jala_ds.config import load_config
    from jala_ds.model.build import build_model
    from jala_ds.train.ds_config import build_ds_config
    from jala_ds.train.engine import build_engine
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    zero2 = scaled_ds_config(CONFIGS / "zero2.json", scratch, "zero2")
    cfg = load_config("tiny_cpu", [*NARROW, zero2, *overrides])
    vocab = add_motion_vocab(load_text_tokenizer(None, cfg.model.arch), cfg.motion_tokenizer.vocab_per_part)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, vocab).to(torch.bfloat16)
    return build_engine(model, build_ds_config(cfg.train, world_size=1), cfg.train, total_steps=1000)


def trained(engine) -> list[torch.nn.Parameter]:
    return [param for param in engine.module.parameters() if param.requires_grad]


def proxy_loss(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.stack([param.float().square().sum() for param in params]).sum() * 1e-3


def give_gradients(engine) -> None:
    engine.backward(proxy_loss(trained(engine)))


def clock(device: torch.device) -> float:
    """This process's CPU seconds on a CPU (less disturbed by the machine's other tenants); on a GPU, wall
    seconds once the queued kernels have run."""
    if device.type != "cuda":
        return time.process_time()
    torch.cuda.synchronize(device)
    return time.perf_counter()


def timing_note(rounds: int, steps: int, unit: str) -> str:
    return (f"ms per {unit}: fastest of {rounds} interleaved rounds of {steps} {unit}s; "
            + ("wall time" if torch.cuda.is_available() else "this process's CPU time"))


def command_line(run: Callable[[int, int, Path | None], object], description: str, unit: str,
                 argv: list[str] | None) -> int:
    """The benchmarks' shared options, then ``run(rounds, steps, out_dir)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the fastest counts")
    parser.add_argument("--steps", type=int, default=5, help=f"timed {unit}s per round and variant")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/)")
    args = parser.parse_args(argv)
    run(args.rounds, args.steps, args.out)
    return 0
