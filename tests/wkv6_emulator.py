"""Runs the unchanged kernels/wkv6/wkv6.cu on the CPU: g++ compiles it against tests/cuda_emul/cuda_shim.h (one
std::thread per CUDA thread), and `Emulator.run` executes a launch planned by the real launcher
(visualrwkv_eval.kernels.wkv6.cupy.plan) on buffers fenced by inaccessible guard pages, in a forked child, so
that an out-of-bounds access fails the test instead of corrupting memory or killing pytest (the pieces shared with
the WKV7 emulation are in tests/wkv_emulator.py). y is refilled with a sentinel before each block, which counts the
blocks that write each element; two threads of one block writing the same element would be a data race, which the
ThreadSanitizer build reports.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import torch
from wkv_emulator import (
    CXXFLAGS,
    SHIM_DIR,
    Guarded,
    LaunchFailed,
    build_libraries,
    gxx,
    gxx_command,
    kernel_for,
    launch_in_child,
)

from visualrwkv_eval.kernels.wkv6.cupy import THREADS, Launch, kernel_source

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / "kernels" / "wkv6" / "wkv6.cu"


def source_for(dtype: torch.dtype, build_dir: Path, edit: dict[str, str] | None = None) -> Path:
    """The kernel file itself, or for fp16 (and edited variants) a rewritten copy in build_dir."""
    return kernel_for(KERNEL, kernel_source(), "wkv6", dtype, build_dir, edit)


def compile_command(dtype: torch.dtype, source: Path, out: Path, extra: Sequence[str] = ()) -> list[str]:
    return gxx_command(SHIM_DIR / "emulator.cpp", dtype, source, out, extra)


def build(build_dir: Path, dtypes: Sequence[torch.dtype]) -> dict[torch.dtype, Path]:
    """One shared library per dtype, compiled in parallel (about 2 s each)."""
    return build_libraries("wkv6", source_for, compile_command, build_dir, dtypes)


class Emulator:
    """The emulated kernels of each dtype, loaded from the libraries `build` made."""

    def __init__(self, libraries: dict[torch.dtype, Path]):
        self.libs = {}
        for dtype, path in libraries.items():
            lib = ctypes.CDLL(str(path))
            lib.wkv6_emul_launch.restype = ctypes.c_int
            lib.wkv6_emul_launch.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong,
                                             ctypes.POINTER(ctypes.c_void_p), ctypes.c_longlong, ctypes.c_longlong,
                                             ctypes.c_longlong, ctypes.POINTER(ctypes.c_int))  # fmt: skip
            self.libs[dtype] = lib

    def run(self, launch: Launch, *, align: str = "end", count_writes: bool = True) -> torch.Tensor | None:
        """Executes `launch` in place (y and state of launch.tensors are written), every buffer guarded.
        Returns the number of writes per element of y (None without count_writes)."""
        guarded = [None if t is None else Guarded(t, align) for t in launch.tensors]
        counts = Guarded(torch.zeros(launch.tensors[6].numel(), dtype=torch.int32), align) if count_writes else None
        try:
            pointers = [0 if g is None else g.ptr for g in guarded]
            self._fork_and_launch(launch, launch.tensors[0].dtype, pointers, 0, launch.grid, counts)
            for original, g in zip(launch.tensors[5:7], guarded[5:7]):
                original.copy_(g.tensor)
            return None if counts is None else counts.tensor.clone()
        finally:
            for g in [*guarded, counts]:
                if g is not None:
                    g.free()

    def run_shifted(self, launch: Launch, blocks: tuple[int, int], shifts: Sequence[int]) -> None:
        """Blocks [begin, end) of `launch`, each pointer passed `shifts[i]` elements before its buffer: offsets past
        2^31 elements without allocating them. y and state are written back as by `run`."""
        guarded = [None if t is None else Guarded(t, "end") for t in launch.tensors]
        try:
            pointers = [0 if g is None else g.ptr - n * g.tensor.element_size() for g, n in zip(guarded, shifts)]
            self._fork_and_launch(launch, launch.tensors[0].dtype, pointers, *blocks, None)
            for original, g in zip(launch.tensors[5:7], guarded[5:7]):
                original.copy_(g.tensor)
        finally:
            for g in guarded:
                if g is not None:
                    g.free()

    def _fork_and_launch(self, launch: Launch, dtype, pointers, begin: int, end: int, counts: Guarded | None):
        lib = self.libs[dtype]
        args = (ctypes.c_void_p * 8)(*pointers)
        count_ptr = ctypes.cast(counts.ptr, ctypes.POINTER(ctypes.c_int)) if counts else None
        y_elems = counts.tensor.numel() if counts else 0
        launch_in_child(
            lambda: lib.wkv6_emul_launch(
                launch.split, begin, end, args, launch.seq_len, launch.heads, y_elems, count_ptr
            )
        )


__all__ = [
    "CXXFLAGS",
    "SHIM_DIR",
    "THREADS",
    "Emulator",
    "Guarded",
    "LaunchFailed",
    "build",
    "compile_command",
    "gxx",
    "source_for",
]
