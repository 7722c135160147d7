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

# the shapes of visualrwkv_eval.model.tiny.SIZES (VisualRWKV-6) and model.tiny7.SIZES7 (VisualRWKV-7), named
# here without importing torch (tests keep them equal)
SIZE_NAMES = ("tiny", "small", "1b6", "3b", "7b")
SIZE_NAMES7 = ("tiny", "0b1", "0b4", "1b5")
FAMILY_SIZES = {"v6": SIZE_NAMES, "v7": SIZE_NAMES7}
ALL_SIZE_NAMES = tuple(dict.fromkeys(SIZE_NAMES + SIZE_NAMES7))
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


def family_of(size: str, family: str | None = None) -> str:
    """The family a benchmark's --size names: `family` if given (it must have that size), else the one whose
    sizes hold it (VisualRWKV-6 for 'tiny', the size both have)."""
    if family is None:
        family = "v6" if size in SIZE_NAMES else "v7"
    if size not in FAMILY_SIZES[family]:
        raise SystemExit(f"--size {size} is not a {family} size: expected one of {', '.join(FAMILY_SIZES[family])}")
    return family


def load(name: str) -> ModuleType:
    """The module of benchmark `name` (imported on first use: most need torch, some CuPy or lmms-eval)."""
    return importlib.import_module(f"{__name__}.{BENCHMARKS[name][0]}")
