"""Runs the unchanged kernels/wkv6/wkv6.cu on the CPU: g++ compiles it against tests/cuda_emul/cuda_shim.h (one
std::thread per CUDA thread), and `Emulator.run` executes a launch planned by the real launcher
(visualrwkv_eval.kernels.wkv6.cupy.plan) on buffers fenced by inaccessible guard pages, in a forked child, so
that an out-of-bounds access fails the test instead of corrupting memory or killing pytest. y is refilled with a
sentinel before each block, which counts the blocks that write each element; two threads of one block writing
the same element would be a data race, which the ThreadSanitizer build reports.

Only fp16 needs the source edited: its two inline-PTX conversions become _Float16 conversions (both round to
nearest even, as cvt.rn does), and the edit checks that each line occurs exactly once.
"""

from __future__ import annotations

import ctypes
import faulthandler
import hashlib
import mmap
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from visualrwkv_eval.kernels.cupy_common import _DTYPE_NAMES
from visualrwkv_eval.kernels.wkv6.cupy import THREADS, Launch, kernel_source

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / "kernels" / "wkv6" / "wkv6.cu"
SHIM_DIR = Path(__file__).resolve().parent / "cuda_emul"
MIN_GXX = 11  # std::barrier and std::bit_cast

FP16_PTX = {
    'asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));': "f = (float)std::bit_cast<_Float16>(x);",
    'asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));': "h = std::bit_cast<unsigned short>((_Float16)x);",
}
CXXFLAGS = ("-std=c++20", "-pthread", "-ffp-contract=off", "-fno-strict-aliasing", "-Wno-unknown-pragmas")


def gxx() -> tuple[str | None, str]:
    """(path of g++, '') when g++ >= 11 is there, else (None, why not)."""
    path = shutil.which(os.environ.get("CXX", "g++"))
    if path is None:
        return None, "no g++ on PATH (the CPU emulation of the CUDA kernel needs g++ >= 11)"
    version = subprocess.run([path, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True).stdout
    major = int(re.match(r"\d+", version.strip() or "0").group())
    if major < MIN_GXX:
        return None, f"{path} is version {version.strip()}; the CPU emulation needs g++ >= {MIN_GXX}"
    return path, ""


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
    path = build_dir / f"wkv6_{_DTYPE_NAMES[dtype]}_{digest}.cu"
    path.write_text(text)
    return path


def compile_command(dtype: torch.dtype, source: Path, out: Path, extra: Sequence[str] = ()) -> list[str]:
    path, why = gxx()
    if path is None:
        raise RuntimeError(why)
    main = SHIM_DIR / "emulator.cpp"
    defines = [f"-DWKV_DTYPE_{_DTYPE_NAMES[dtype]}", f'-DWKV_SOURCE="{source}"', f"-I{SHIM_DIR}"]
    return [path, *CXXFLAGS, *defines, *extra, str(main), "-o", str(out)]


def build(build_dir: Path, dtypes: Sequence[torch.dtype]) -> dict[torch.dtype, Path]:
    """One shared library per dtype, compiled in parallel (about 2 s each)."""

    def one(dtype: torch.dtype) -> Path:
        out = build_dir / f"wkv6_emul_{_DTYPE_NAMES[dtype]}.so"
        cmd = compile_command(dtype, source_for(dtype, build_dir), out, ("-O2", "-fPIC", "-shared"))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"g++ failed for {dtype}:\n{' '.join(cmd)}\n{done.stderr}")
        return out

    with ThreadPoolExecutor(max_workers=len(dtypes)) as pool:
        return dict(zip(dtypes, pool.map(one, dtypes)))


# --- guarded buffers ------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
PAGE = mmap.PAGESIZE


class Guarded:
    """A copy of a tensor in shared memory (MAP_SHARED: a forked child's writes are seen here) with an
    inaccessible page before and after; `align` puts the data against the trailing page ('end': catches reads
    past the end) or the leading one ('start': catches reads before the start)."""

    def __init__(self, t: torch.Tensor, align: str):
        nbytes = t.numel() * t.element_size()
        body = -(-max(nbytes, 1) // PAGE) * PAGE
        self.size = body + 2 * PAGE
        flags = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS
        base = _libc.mmap(None, self.size, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        self.base = base
        for page in (base, base + PAGE + body):
            if _libc.mprotect(page, PAGE, 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect failed")
        self.ptr = base + PAGE + (body - max(nbytes, t.element_size()) if align == "end" else 0)
        view = (ctypes.c_char * max(nbytes, t.element_size())).from_address(self.ptr)
        self.tensor = torch.frombuffer(view, dtype=t.dtype)
        self.tensor = self.tensor[: t.numel()].view(t.shape)
        self.tensor.copy_(t)

    def free(self) -> None:
        self.tensor = None
        _libc.munmap(self.base, self.size)


# --- running launches -----------------------------------------------------------------------------------------


class LaunchFailed(AssertionError):
    pass


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
        pid = os.fork()
        if pid == 0:  # the child: launch, report through the exit status, never return into pytest
            code = 3
            try:
                faulthandler.disable()  # a crash is the parent's to report, without the child's stack dump
                code = lib.wkv6_emul_launch(launch.split, begin, end, args, launch.seq_len, launch.heads, y_elems,
                                            count_ptr) & 0xFF  # fmt: skip
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            sig = signal.Signals(os.WTERMSIG(status)).name
            raise LaunchFailed(f"the emulated kernel died of {sig} (SIGSEGV: an access outside the buffers)")
        if os.WEXITSTATUS(status) != 0:
            raise LaunchFailed(f"the emulated launch failed with status {os.WEXITSTATUS(status)}")


__all__ = ["THREADS", "Emulator", "Guarded", "LaunchFailed", "build", "compile_command", "gxx", "source_for"]
