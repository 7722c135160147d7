"""The one timer and the one peak-memory gauge, shared by `visualrwkv-eval bench` and the adapter's throughput
report (visualrwkv_eval.throughput)."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")
# Linux (>= 4.0): writing "5" here resets the process's resident-set high-water mark (VmHWM, ru_maxrss)
CLEAR_REFS = Path("/proc/self/clear_refs")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Wall seconds of one call (CUDA work synchronised before and after) and its value."""
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return time.perf_counter() - start, value


def seconds(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1, calls: int = 1) -> float:
    """Median seconds per call over `reps` bursts of `calls` back-to-back calls, after `warmup` calls.

    On CUDA a burst is timed between CUDA events, so host overhead hides behind GPU work where there is any (as in
    the model's loop over layers); calls=1 keeps the launch latency in. Elsewhere, wall time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type != "cuda":
            times.append(timed(lambda: [fn() for _ in range(calls)], device)[0] / calls)
            continue
        synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    return statistics.median(times)


def peak_memory_reset(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator count, or the process's resident-set high-water mark on the CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        CLEAR_REFS.write_text("5")
    except OSError:  # not Linux, or a kernel without it: the peak then counts from the process's start
        pass


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory since the last `peak_memory_reset`, in GiB.

    CUDA: tensors allocated by torch (max_memory_allocated). CPU: torch keeps no such count, so this is the
    process's peak resident set (ru_maxrss: tensors, model weights, Python, every library). The two copies this
    replaces disagreed here: the benchmarks returned None on the CPU, because ru_maxrss could not be reset and so
    was not a per-measurement figure; the throughput report returned ru_maxrss since the process started. Both
    are answered by resetting the high-water mark (CLEAR_REFS), which makes the CPU figure mean what the CUDA one
    means, a peak over the measured span. A caller comparing two models in one process must still know that a
    resident set includes what the allocator kept from earlier work (see bench length)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux
