"""What the C kernels for CPU share (kernels/rowmm/cpu.py, kernels/wkv6/cpu.py): a build at run time for the host
CPU, as the CUDA kernels are compiled on the machine that runs them, and a ctypes handle on the result.

`gcc -O3 -march=native -fopenmp` (or $CC) builds each source into a cache folder ($VISUALRWKV_CACHE, else
~/.cache/visualrwkv_eval), keyed by the source, the flags, the compiler and the CPU's flags, and written
atomically, so that the processes of one `accelerate` run share one build. The library's OpenMP runtime is the one
torch already loaded (same soname, libgomp.so.1), and every call passes torch.get_num_threads(), so the kernels
run on torch's threads. -ffp-contract=off: the compiler fuses nothing the source does not say, so the bits are
those the source spells out.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")


def cache_dir() -> Path:
    return Path(os.environ.get("VISUALRWKV_CACHE") or Path.home() / ".cache" / "visualrwkv_eval")


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build(source: Path) -> Path:
    """The shared library of `source` for this CPU, built once (then found in the cache; the key covers the files
    it #includes by relative path)."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set $CC or install gcc)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    texts = [source.read_text()]
    texts += [(source.parent / name).read_text() for name in re.findall(r'#include "([^"]+)"', texts[0])]
    key = hashlib.sha256("\0".join([*texts, *FLAGS, version, _cpu_flags()]).encode()).hexdigest()
    lib = cache_dir() / f"{source.stem}-{key[:16]}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        built = Path(tmp) / lib.name
        done = subprocess.run([cc, *FLAGS, str(source), "-o", str(built)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed on {source.name}: {done.stderr.strip()[-2000:]}")
        os.replace(built, lib)  # atomic: a concurrent process sees no file or the whole of it
    return lib


@functools.cache
def function(source: Path, name: str, argtypes: tuple) -> ctypes._CFuncPtr:
    """The C function `name` of `source` (built on first use), returning void."""
    fn = getattr(ctypes.CDLL(str(build(source))), name)
    fn.restype, fn.argtypes = None, list(argtypes)
    return fn


def error_of(check) -> str | None:
    """None when `check()` (a build and a comparison with the reference) passes, else why it failed."""
    try:
        return check()
    except Exception as e:  # no compiler, a failed build, a library that does not load: the reference serves
        return f"{type(e).__name__}: {e}"
