"""`visualrwkv-eval bench`: performance measurements whose results are JSON (+ PNG plots).

A benchmark is one module with `add_arguments(parser)` and `run(args)`, listed once in BENCHMARKS; the command
line imports a module only when the `bench` command is given, so `visualrwkv-eval --help` stays free of torch.
Real-shaped random weights time exactly like the released checkpoints; every result records the device, dtype,
shapes, versions and date (bench.common.environment). The timer and the peak-memory gauge are
visualrwkv_eval.measure's, shared with the adapter's throughput report.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# the shapes of visualrwkv_eval.model.tiny.SIZES, named here without importing torch (a test keeps them equal)
SIZE_NAMES = ("tiny", "small", "1b6", "3b", "7b")
# name -> (module under visualrwkv_eval.bench, one line for --help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "length": ("length", "decode latency and memory against inference length, vs a Transformer"),
    "eval": ("eval_throughput", "samples/s on a GQA-like workload, vs the reference protocol"),
    "roofline": ("roofline", "decode / prefill against the device's bandwidth / matmul bounds"),
    "scale": ("scale", "samples/s and peak memory against rows, through the lmms-eval CLI"),
    "peer": ("peer", "CPU prefill / decode vs the official rwkv package on the same weights"),
    "kernels": ("kernels", "CuPy WKV kernels vs the PyTorch reference on a GPU: errors and timings"),
    "batching": ("batching", "the mini benchmarks through the lmms-eval CLI at batch 1 and 8: speed-up"),
    "pipeline": ("pipeline", "the adapter's image pipeline feeding the model: samples/s against image workers"),
}


def load(name: str) -> ModuleType:
    """The module of benchmark `name` (imported on first use: most need torch, some CuPy or lmms-eval)."""
    return importlib.import_module(f"{__name__}.{BENCHMARKS[name][0]}")
