"""The CUDA kernels of both WKV ops (kernels/wkv6/wkv6.cu, kernels/wkv7/wkv7.cu, unchanged) under ThreadSanitizer:
the CPU emulation (tests/wkv_emulator.py) builds each kernel's launcher as a stand-alone program with
-fsanitize=thread (which cannot be loaded into Python by ctypes) and runs a packed prefill and a decode step. No
data race between the emulated threads may be reported, and removing the kernel's first barrier must be caught.
Skipped, with the reason, where no g++ >= 11 is installed or ThreadSanitizer cannot run."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers import CUPY_MISSING

pytest.importorskip("cupy", reason=CUPY_MISSING)  # the emulators import the launchers
import wkv6_emulator
import wkv7_emulator
from wkv_emulator import gxx

GXX, WHY_NOT = gxx()
pytestmark = pytest.mark.skipif(GXX is None, reason=WHY_NOT)

EMULATORS = {"wkv6": wkv6_emulator, "wkv7": wkv7_emulator}
FIRST_BARRIER = "__syncthreads();  // every thread is done reading the previous chunk"  # in both kernels


@pytest.fixture(scope="module", params=list(EMULATORS))
def tsan_runs(request, tmp_path_factory):
    """Exit status and stderr of the op's kernel under ThreadSanitizer, as it is and without its first barrier
    (both built in parallel)."""
    emul = EMULATORS[request.param]
    variants = {"as is": None, "no first barrier": {FIRST_BARRIER: "// barrier removed"}}

    def build_and_run(name, edit):
        build_dir = tmp_path_factory.mktemp(f"tsan_{request.param}")
        exe = build_dir / "tsan"
        source = emul.source_for(torch.bfloat16, build_dir, edit)
        flags = ("-O1", "-g", "-fsanitize=thread", "-DWKV_EMUL_MAIN")
        built = subprocess.run(emul.compile_command(torch.bfloat16, source, exe, flags), capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
        env = {"TSAN_OPTIONS": "halt_on_error=0 exitcode=66", "PATH": "/usr/bin:/bin"}
        return subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(variants, pool.map(build_and_run, variants, variants.values())))
    for done in runs.values():
        if "FATAL: ThreadSanitizer" in done.stderr:
            pytest.skip(f"ThreadSanitizer cannot run here: {done.stderr.strip().splitlines()[-1]}")
    return runs


@pytest.mark.slow
def test_thread_sanitizer_finds_no_race(tsan_runs):
    done = tsan_runs["as is"]
    assert done.returncode == 0, done.stderr[-4000:]
    assert "WARNING: ThreadSanitizer" not in done.stderr and done.stdout.strip() == "ok"


@pytest.mark.slow
def test_thread_sanitizer_catches_a_missing_barrier(tsan_runs):
    done = tsan_runs["no first barrier"]
    assert done.returncode == 66 and "WARNING: ThreadSanitizer: data race" in done.stderr
