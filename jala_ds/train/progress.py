"""What rank 0 shows while training: a tqdm bar on a terminal, plain log lines otherwise (files, CI, SLURM)."""
from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import TextIO

from tqdm import tqdm


def format_metrics(metrics: dict[str, float]) -> str:
    return " | ".join(f"{key} {value:.4g}" for key, value in metrics.items())


class Progress:
    """Steps done, ETA and throughput; silent on ranks other than 0."""

    def __init__(self, total_steps: int, start_step: int, *, enabled: bool, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total = total_steps
        self.start_step = start_step
        self.started = time.monotonic()
        self.enabled = enabled
        self.bar = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, file=self.stream, unit="step",
                            dynamic_ncols=True)

    def eta(self, step: int) -> timedelta:
        done = step - self.start_step
        per_step = (time.monotonic() - self.started) / done if done > 0 else 0.0
        return timedelta(seconds=round(per_step * (self.total - step)))

    def update(self, step: int, metrics: dict[str, float] | None = None) -> None:
        """Advance to ``step`` (1-based count of optimiser steps done); show ``metrics`` when given."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if metrics:
                self.bar.set_postfix_str(format_metrics(metrics))
        elif metrics:
            print(f"step {step}/{self.total} | {format_metrics(metrics)} | eta {self.eta(step)}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
