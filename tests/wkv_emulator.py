"""What the CPU emulations of the WKV kernels share (tests/wkv6_emulator.py, tests/wkv7_emulator.py): g++ >= 11, the
CUDA shim and launch helpers of tests/cuda_emul/, the fp16 source edit, compiling one shared library per dtype,
buffers fenced by inaccessible guard pages, and launches in a forked child, so that an out-of-bounds access fails
the test instead of corrupting memory or killing pytest.

Only fp16 needs a kernel source edited: its two inline-PTX conversions become _Float16 conversions (both round to
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from visualrwkv_eval.kernels.cupy_common import _DTYPE_NAMES

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


def kernel_for(
    kernel: Path, text: str, op: str, dtype: torch.dtype, build_dir: Path, edit: dict[str, str] | None = None
) -> Path:
    """`kernel` itself (whose source is `text`), or for fp16 (and edited variants) a rewritten copy in build_dir."""
    edits = dict(edit or {})
    if dtype == torch.float16:
        edits |= FP16_PTX
    if not edits:
        return kernel
    for old, new in edits.items():
        count = text.count(old)
        if count != 1:
            raise AssertionError(f"expected {old!r} once in {kernel.name}, found it {count} times")
        text = text.replace(old, new)
    digest = hashlib.sha1(repr(sorted(edits.items())).encode()).hexdigest()[:12]
    path = build_dir / f"{op}_{_DTYPE_NAMES[dtype]}_{digest}.cu"
    path.write_text(text)
    return path


def gxx_command(main: Path, dtype: torch.dtype, source: Path, out: Path, extra: Sequence[str] = ()) -> list[str]:
    """g++ building the CPU launcher `main` around the kernel file `source` for `dtype`."""
    path, why = gxx()
    if path is None:
        raise RuntimeError(why)
    defines = [f"-DWKV_DTYPE_{_DTYPE_NAMES[dtype]}", f'-DWKV_SOURCE="{source}"', f"-I{SHIM_DIR}"]
    return [path, *CXXFLAGS, *defines, *extra, str(main), "-o", str(out)]


def build_libraries(
    op: str,
    source_for: Callable[[torch.dtype, Path], Path],
    compile_command: Callable[..., list[str]],
    build_dir: Path,
    dtypes: Sequence[torch.dtype],
) -> dict[torch.dtype, Path]:
    """One shared library per dtype, compiled in parallel (about 2 s each)."""

    def one(dtype: torch.dtype) -> Path:
        out = build_dir / f"{op}_emul_{_DTYPE_NAMES[dtype]}.so"
        cmd = compile_command(dtype, source_for(dtype, build_dir), out, ("-O2", "-fPIC", "-shared"))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"g++ failed for {dtype}:\n{' '.join(cmd)}\n{done.stderr}")
        return out

    with ThreadPoolExecutor(max_workers=len(dtypes)) as pool:
        return dict(zip(dtypes, pool.map(one, dtypes)))


def build_edited(emul, build_dir: Path, edit: dict[str, str], dtype: torch.dtype = torch.float32):
    """An `emul.Emulator` (emul: tests/wkv6_emulator.py or tests/wkv7_emulator.py) of the op's kernel with `edit`
    applied to its source, built for `dtype` only: a deliberately broken kernel for the tests of the guards."""
    source = emul.source_for(dtype, build_dir, edit)
    out = build_dir / "broken.so"
    subprocess.run(
        emul.compile_command(dtype, source, out, ("-O1", "-fPIC", "-shared")), check=True, capture_output=True
    )
    return emul.Emulator({dtype: out})


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


def launch_in_child(launch: Callable[[], int]) -> None:
    """Runs `launch()` (an emulated launch returning its status) in a forked child; raises LaunchFailed when the
    child dies of a signal or returns a status other than 0. Writes reach the parent through shared memory."""
    pid = os.fork()
    if pid == 0:  # the child: launch, report through the exit status, never return into pytest
        code = 3
        try:
            faulthandler.disable()  # a crash is the parent's to report, without the child's stack dump
            code = launch() & 0xFF
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        raise LaunchFailed(f"the emulated kernel died of {sig} (SIGSEGV: an access outside the buffers)")
    if os.WEXITSTATUS(status) != 0:
        raise LaunchFailed(f"the emulated launch failed with status {os.WEXITSTATUS(status)}")
