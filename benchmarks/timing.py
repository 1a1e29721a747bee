"""What the kernel benchmarks share: one timer for CPU and GPU, the GPU's kernel time per call, a scoped environment
variable, the cards' memory bandwidth."""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable

PEAK_GBPS = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800, "A100-SXM4-80GB": 2039,
             "A100 80GB PCIe": 1935, "A800": 2039, "B200": 8000}
"""Nominal memory bandwidth (GB/s) of cards we expect, matched by substring of the device name."""


def peak_bandwidth(device: str) -> float | None:
    return next((gbps for name, gbps in PEAK_GBPS.items() if name in device), None)


def time_ms(fn: Callable[[], object], cuda: bool, reps: int) -> tuple[float, object]:
    """(median wall time of ``fn`` in ms, its last output); on CUDA through triton's do_bench (L2 flushed)."""
    if cuda:
        from triton.testing import do_bench

        return do_bench(fn, warmup=10, rep=max(50, reps * 10), return_mode="median"), fn()
    out = fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), out


def kernel_ms(fn: Callable[[], object], calls: int) -> float:
    """Mean time (ms) the GPU's kernels ran per call of ``fn``, from ``torch.profiler``. A call whose kernels take
    less time than the host needs to launch them (small tensors, autograd, custom operators) leaves the GPU idle
    between them, and event timing counts those gaps; this counts only the kernels."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return sum(event.self_device_time_total for event in prof.key_averages()
               if event.device_type != DeviceType.CPU and not event.is_user_annotation) / calls / 1e3


@contextlib.contextmanager
def environment(name: str, value: str | None):
    """Set (or, with None, leave alone) an environment variable for the block only."""
    previous = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
