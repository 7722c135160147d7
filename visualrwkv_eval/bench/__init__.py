"""`visualrwkv-eval bench`: performance measurements whose results are JSON (+ PNG plots).

- length:   per-token decode latency and peak memory against inference length, VisualRWKV vs a
            LLaVA-1.5-shaped Transformer (Llama, SDPA, KV cache), measured in one run
- eval:     samples/s on a GQA-like workload, this project (batch 1 and batched) vs the reference protocol
- roofline: decode and prefill as fractions of the device's measured bandwidth and matmul bounds
- peer:     CPU prefill and decode against the official `rwkv` package on the same checkpoint, same threads

Real-shaped random weights time exactly like the released checkpoints; every result records the device,
dtype, shapes, versions and date.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return platform.machine()


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    import transformers

    try:
        import cupy

        cupy_version = cupy.__version__
    except ImportError:
        cupy_version = None
    return {
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "cupy": cupy_version},
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median wall time of `reps` calls after `warmup` (CUDA work synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak allocated memory since the last reset (CUDA); None on CPU, where torch keeps no such count."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def tensor_mib(*tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def save(result: dict, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(path: Path, labels: list[str], values: list[float], ylabel: str, title: str, top: float | None = None):
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(labels, values)
    ax.set_ylim(0, top)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
