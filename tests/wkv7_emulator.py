"""Runs the unchanged kernels/wkv7/wkv7.cu on the CPU, as tests/wkv6_emulator.py does for WKV6 (and with its
pieces: g++ >= 11, the CUDA shim of tests/cuda_emul/, guarded buffers, forked launches): g++ compiles the kernel
with tests/cuda_emul/wkv7_launch.cpp (one std::thread per CUDA thread), and `Emulator.run` executes a launch
planned by the real launcher (visualrwkv_eval.kernels.wkv7.cupy.plan) on buffers fenced by inaccessible guard
pages, in a forked child, so that an out-of-bounds access fails the test instead of corrupting memory. y is
refilled with a sentinel before each block, which counts the blocks that write each element.

Only fp16 needs the source edited: its two inline-PTX conversions become _Float16 conversions (both round to
nearest even, as cvt.rn does).
"""

from __future__ import annotations

import ctypes
import faulthandler
import hashlib
import os
import signal
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from wkv6_emulator import CXXFLAGS, FP16_PTX, SHIM_DIR, Guarded, LaunchFailed, gxx

from visualrwkv_eval.kernels.cupy_common import _DTYPE_NAMES
from visualrwkv_eval.kernels.wkv7.cupy import STATE, Launch, Y, kernel_source

KERNEL = Path(__file__).resolve().parents[1] / "kernels" / "wkv7" / "wkv7.cu"
LAUNCHER = SHIM_DIR / "wkv7_launch.cpp"


def source_for(dtype: torch.dtype, build_dir: Path, edit: dict[str, str] | None = None) -> Path:
    """The kernel file itself, or for fp16 (and edited variants) a rewritten copy in build_dir."""
    edits = dict(edit or {})
    if dtype == torch.float16:
        edits |= FP16_PTX
    if not edits:
        return KERNEL
    text = kernel_source()
    for old, new in edits.items():
        count = text.count(old)
        if count != 1:
            raise AssertionError(f"expected {old!r} once in {KERNEL.name}, found it {count} times")
        text = text.replace(old, new)
    digest = hashlib.sha1(repr(sorted(edits.items())).encode()).hexdigest()[:12]
    path = build_dir / f"wkv7_{_DTYPE_NAMES[dtype]}_{digest}.cu"
    path.write_text(text)
    return path


def compile_command(dtype: torch.dtype, source: Path, out: Path, extra: Sequence[str] = ()) -> list[str]:
    path, why = gxx()
    if path is None:
        raise RuntimeError(why)
    defines = [f"-DWKV_DTYPE_{_DTYPE_NAMES[dtype]}", f'-DWKV_SOURCE="{source}"', f"-I{SHIM_DIR}"]
    return [path, *CXXFLAGS, *defines, *extra, str(LAUNCHER), "-o", str(out)]


def build(build_dir: Path, dtypes: Sequence[torch.dtype]) -> dict[torch.dtype, Path]:
    """One shared library per dtype, compiled in parallel."""

    def one(dtype: torch.dtype) -> Path:
        out = build_dir / f"wkv7_emul_{_DTYPE_NAMES[dtype]}.so"
        cmd = compile_command(dtype, source_for(dtype, build_dir), out, ("-O2", "-fPIC", "-shared"))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"g++ failed for {dtype}:\n{' '.join(cmd)}\n{done.stderr}")
        return out

    with ThreadPoolExecutor(max_workers=len(dtypes)) as pool:
        return dict(zip(dtypes, pool.map(one, dtypes)))


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
        pid = os.fork()
        if pid == 0:  # the child: launch, report through the exit status, never return into pytest
            code = 3
            try:
                faulthandler.disable()  # a crash is the parent's to report, without the child's stack dump
                code = lib.wkv7_emul_launch(0, launch.grid, args, launch.seq_len, launch.heads,
                                            counts.tensor.numel(), count_ptr) & 0xFF  # fmt: skip
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            sig = signal.Signals(os.WTERMSIG(status)).name
            raise LaunchFailed(f"the emulated kernel died of {sig} (SIGSEGV: an access outside the buffers)")
        if os.WEXITSTATUS(status) != 0:
            raise LaunchFailed(f"the emulated launch failed with status {os.WEXITSTATUS(status)}")


__all__ = ["Emulator", "LaunchFailed", "build", "compile_command", "gxx", "source_for"]
