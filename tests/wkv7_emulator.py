"""Runs the unchanged kernels/wkv7/wkv7.cu on the CPU, as tests/wkv6_emulator.py does for WKV6, with the pieces
both share (tests/wkv_emulator.py: g++ >= 11, the CUDA shim of tests/cuda_emul/, guarded buffers, forked launches):
g++ compiles the kernel with tests/cuda_emul/wkv7_launch.cpp (one std::thread per CUDA thread), and `Emulator.run`
executes a launch planned by the real launcher (visualrwkv_eval.kernels.wkv7.cupy.plan) on buffers fenced by
inaccessible guard pages, in a forked child, so that an out-of-bounds access fails the test instead of corrupting
memory. y is refilled with a sentinel before each block, which counts the blocks that write each element.
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

from visualrwkv_eval.kernels.wkv7.cupy import STATE, Launch, Y, kernel_source

KERNEL = Path(__file__).resolve().parents[1] / "kernels" / "wkv7" / "wkv7.cu"
LAUNCHER = SHIM_DIR / "wkv7_launch.cpp"


def source_for(dtype: torch.dtype, build_dir: Path, edit: dict[str, str] | None = None) -> Path:
    """The kernel file itself, or for fp16 (and edited variants) a rewritten copy in build_dir."""
    return kernel_for(KERNEL, kernel_source(), "wkv7", dtype, build_dir, edit)


def compile_command(dtype: torch.dtype, source: Path, out: Path, extra: Sequence[str] = ()) -> list[str]:
    return gxx_command(LAUNCHER, dtype, source, out, extra)


def build(build_dir: Path, dtypes: Sequence[torch.dtype]) -> dict[torch.dtype, Path]:
    """One shared library per dtype, compiled in parallel."""
    return build_libraries("wkv7", source_for, compile_command, build_dir, dtypes)


class Emulator:
    """The emulated kernel of each dtype, loaded from the libraries `build` made."""

    def __init__(self, libraries: dict[torch.dtype, Path]):
        self.libs = {}
        for dtype, path in libraries.items():
            lib = ctypes.CDLL(str(path))
            lib.wkv7_emul_launch.restype = ctypes.c_int
            lib.wkv7_emul_launch.argtypes = (ctypes.c_longlong, ctypes.c_longlong, ctypes.POINTER(ctypes.c_void_p),
                                             ctypes.c_longlong, ctypes.c_longlong, ctypes.c_longlong,
                                             ctypes.POINTER(ctypes.c_int))  # fmt: skip
            lib.wkv7_emul_element_size.restype = ctypes.c_int
            self.libs[dtype] = lib

    def run(self, launch: Launch, *, align: str = "end") -> torch.Tensor:
        """Executes `launch` in place (y and state of launch.tensors are written), every buffer guarded. Returns
        the number of writes per element of y."""
        guarded = [None if t is None else Guarded(t, align) for t in launch.tensors]
        counts = Guarded(torch.zeros(launch.tensors[Y].numel(), dtype=torch.int32), align)
        try:
            pointers = [0 if g is None else g.ptr for g in guarded]
            self._fork_and_launch(launch, pointers, counts)
            for i in (STATE, Y):
                launch.tensors[i].copy_(guarded[i].tensor)
            return counts.tensor.clone()
        finally:
            for g in [*guarded, counts]:
                if g is not None:
                    g.free()

    def _fork_and_launch(self, launch: Launch, pointers, counts: Guarded) -> None:
        lib = self.libs[launch.tensors[0].dtype]
        args = (ctypes.c_void_p * len(pointers))(*pointers)
        count_ptr = ctypes.cast(counts.ptr, ctypes.POINTER(ctypes.c_int))
        y_elems = counts.tensor.numel()
        launch_in_child(
            lambda: lib.wkv7_emul_launch(0, launch.grid, args, launch.seq_len, launch.heads, y_elems, count_ptr)
        )


__all__ = ["CXXFLAGS", "SHIM_DIR", "Emulator", "LaunchFailed", "build", "compile_command", "gxx", "source_for"]
