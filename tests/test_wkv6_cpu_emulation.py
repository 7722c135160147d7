"""The CUDA kernel itself (kernels/wkv6/wkv6.cu, unchanged) executed on the CPU, against a float64 recurrence.

tests/wkv6_emulator.py compiles the kernel with g++ against a small CUDA shim (one std::thread per CUDA thread,
barriers for __syncthreads and warp shuffles) and runs launches planned by the real launcher
(kernels/wkv6/cupy.py, plan) on buffers fenced by guard pages, counting how many blocks write each element of y.
Skipped, with the reason, where no g++ >= 11 is installed. tests/test_wkv_thread_sanitizer.py repeats a launch under
ThreadSanitizer.
"""

from __future__ import annotations

import ctypes
import subprocess

import pytest
import torch
from helpers import CUPY_MISSING, cu_seqlens, naive_wkv6, rel_err, wkv6_inputs
from helpers import ulps as helpers_ulps

from visualrwkv_eval.kernels import wkv6_decode, wkv6_prefill, wkv6_prefill_torch

pytest.importorskip("cupy", reason=CUPY_MISSING)  # the launcher plans every emulated launch
import wkv6_emulator as emul
from wkv_emulator import build_edited

from visualrwkv_eval.kernels.wkv6 import cupy as launcher

GXX, WHY_NOT = emul.gxx()
pytestmark = pytest.mark.skipif(GXX is None, reason=WHY_NOT)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SM_COUNT = 132  # an H100's: decides the default split, as on the GPU
LENGTHS = [0, 1, 7, 8, 9, 64, 200]  # empty, single step, around the 8-step chunk, and one long sequence


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """The kernel of every dtype, compiled once per test session."""
    return emul.Emulator(emul.build(tmp_path_factory.mktemp("wkv6_emul"), DTYPES))


def inputs(lengths, H=2, dtype=torch.float32, seed=0, decode=False):
    """Packed r, k, v, w, u in `dtype`, an fp32 state per sequence and the offsets (None for decode)."""
    *tensors, state = wkv6_inputs(len(lengths) if decode else sum(lengths), H, len(lengths), seed=seed, dtype=dtype)
    return tensors, state, None if decode else cu_seqlens(lengths)


def emulate(emulator, tensors, state, cu, *, decode=False, split=None, align="end"):
    """y from one emulated launch (state updated in place); every element of y written by exactly one block."""
    y, launch = launcher.plan(*tensors, state, cu, decode=decode, split=split, sm_count=SM_COUNT)
    assert launch is not None
    counts = emulator.run(launch, align=align)
    assert launch.tensors[5] is state  # contiguous: updated in place
    assert torch.equal(counts, torch.ones_like(counts)), f"write counts {counts.unique(return_counts=True)}"
    return y


def reference(tensors, state, cu):
    """y and final state of each sequence in float64, from the step-by-step recurrence."""
    r, k, v, w, u = (t.double() for t in tensors)
    bounds = [0, r.shape[0]] if cu is None else cu.tolist()
    ys, states = [], []
    for b in range(len(bounds) - 1):
        s, e = bounds[b], bounds[b + 1]
        if e == s:  # nothing to run: the state stays
            states.append(state[b].double())
            continue
        y, S = naive_wkv6(r[s:e], k[s:e], v[s:e], w[s:e], u, state[b].double())
        ys.append(y)
        states.append(S)
    return torch.cat(ys), torch.stack(states)


def ulps(y: torch.Tensor, ref: torch.Tensor) -> float:
    """helpers.ulps with this kernel's fp32 slack (1e-6 of the largest |y|)."""
    return helpers_ulps(y, ref, fp32_slack=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_packed_prefill_matches_float64_recurrence(emulator, dtype):
    tensors, state, cu = inputs(LENGTHS, H=1, dtype=dtype)
    y_ref, s_ref = reference(tensors, state, cu)
    y = emulate(emulator, tensors, state, cu)
    assert y.dtype == dtype
    assert rel_err(state, s_ref) <= 1e-6
    if dtype == torch.float32:
        assert rel_err(y, y_ref) <= 1e-6
    else:  # fp32 arithmetic, one rounding to the storage dtype at the end
        assert ulps(y, y_ref) <= 1.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_split_is_bit_identical(emulator, dtype):
    tensors, state, cu = inputs([9, 0, 70], dtype=dtype, seed=1)
    results = []
    for split in launcher.SPLITS:
        s = state.clone()
        results.append((emulate(emulator, tensors, s, cu, split=split), s))
    for y, s in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(s, results[0][1])


def test_packed_batch_equals_separate_runs(emulator):
    tensors, state, cu = inputs(LENGTHS, H=1, dtype=torch.bfloat16, seed=2)
    initial = state.clone()
    y = emulate(emulator, tensors, state, cu)
    for i, (a, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if a == e:
            assert torch.equal(state[i], initial[i])  # an empty sequence leaves its state alone
            continue
        alone = initial[i : i + 1].clone()
        y_i = emulate(emulator, [t[a:e] for t in tensors[:4]] + [tensors[4]], alone, None)
        assert torch.equal(y[a:e], y_i) and torch.equal(state[i], alone[0])


@pytest.mark.parametrize("cut", [1, 8, 16, 13])
def test_state_carry_at_chunk_boundaries(emulator, cut):
    tensors, state, _ = inputs([40], dtype=torch.float32, seed=cut)
    whole, parts = state.clone(), state.clone()
    y = emulate(emulator, tensors, whole, None)
    first = [t[:cut] for t in tensors[:4]] + [tensors[4]]
    rest = [t[cut:] for t in tensors[:4]] + [tensors[4]]
    y_parts = torch.cat([emulate(emulator, first, parts, None), emulate(emulator, rest, parts, None)])
    assert torch.equal(y_parts, y) and torch.equal(parts, whole)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_equals_one_step_prefill(emulator, dtype):
    tensors, state, _ = inputs([1] * 5, dtype=dtype, seed=3, decode=True)
    as_prefill = state.clone()
    y_prefill = emulate(emulator, tensors, as_prefill, torch.arange(6))
    y_ref, s_ref = reference(tensors, state, torch.arange(6))
    y = emulate(emulator, tensors, state, None, decode=True)
    assert torch.equal(y, y_prefill) and torch.equal(state, as_prefill)
    assert rel_err(state, s_ref) <= 1e-6
    assert (rel_err(y, y_ref) <= 1e-6) if dtype == torch.float32 else ulps(y, y_ref) <= 1.0


def test_reads_before_the_buffers_are_caught_too(emulator):
    """The other tests put each buffer against the guard page after it; here against the one before it."""
    tensors, state, cu = inputs([3, 0, 17], dtype=torch.float16, seed=4)
    expected = state.clone()
    y_end = emulate(emulator, tensors, expected, cu)
    assert torch.equal(emulate(emulator, tensors, state, cu, align="start"), y_end)
    assert torch.equal(state, expected)


def test_a_kernel_that_reads_out_of_bounds_crashes_the_test(emulator, tmp_path):
    """The guard pages work: a kernel reading one step too far dies of SIGSEGV, reported as a failure."""
    broken = build_edited(emul, tmp_path, {"if (tc + c < t1) {": "if (tc + c <= t1) {"})
    tensors, state, _ = inputs([13], seed=5)  # the second chunk reads row 13, past the end
    _, launch = launcher.plan(*tensors, state, None, decode=False, split=1, sm_count=SM_COUNT)
    with pytest.raises(emul.LaunchFailed, match="SIGSEGV"):
        broken.run(launch)


def test_denormals_flush_to_zero_as_with_ftz(emulator):
    """-ftz=true on the GPU: a denormal state reads as zero. A tiny state with k = 0 and decays near 1 ends at
    exactly zero (without FTZ it would stay near 1e-39)."""
    tensors, state, _ = inputs([9], seed=10)
    r, k, v, w, u = tensors
    state.fill_(1e-39)
    y = emulate(emulator, [r, torch.zeros_like(k), v, torch.full_like(w, -20.0), u], state, None)
    assert torch.count_nonzero(state) == 0 and torch.count_nonzero(y) == 0


def test_partial_warp_masks_are_refused(tmp_path):
    """The shim's __shfl_xor_sync serves full warps only; anything else stops the program instead of guessing."""
    main = tmp_path / "mask.cpp"
    main.write_text(
        '#include "cuda_shim.h"\n'
        "int main() { emul::Block block(32); emul::block = &block; return (int)__shfl_xor_sync(0xffffu, 1.f, 1); }\n"
    )
    exe = tmp_path / "mask"
    subprocess.run([GXX, *emul.CXXFLAGS, f"-I{emul.SHIM_DIR}", str(main), "-o", str(exe)], check=True)
    done = subprocess.run([str(exe)], capture_output=True, text=True)
    assert done.returncode < 0 and "partial mask" in done.stderr


# --- offsets past 2^31 elements: base pointers shifted back, nothing huge allocated ---------------------------

SHIFT_ROWS = 2**25  # rows * (H * N = 128) = 2^32 elements before the data (the emulation adds no checks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_prefill_offsets_past_2_31(emulator, dtype):
    tensors, state, cu = inputs([5, 12], dtype=dtype, seed=6)
    expected_state = state.clone()
    expected = emulate(emulator, tensors, expected_state, cu)
    H = tensors[0].shape[1]
    far = cu + SHIFT_ROWS  # the rows of the two sequences, 2^32 elements in
    y = torch.full_like(tensors[0], float("nan"))
    shift = SHIFT_ROWS * H * 64
    launch = launcher.Launch(2, 2 * H * 2, (*tensors, state, y, far), 0, H)
    emulator.run_shifted(launch, (0, launch.grid), (shift, shift, shift, shift, 0, 0, shift, 0))
    assert torch.equal(y, expected) and torch.equal(state, expected_state)


def test_decode_block_indices_past_2_31_elements(emulator):
    """Decode of the last 3 sequences of a batch of 2^25 + 3: block indices near 2^26, state offsets near 2^37."""
    tensors, state, _ = inputs([1] * 3, H=1, seed=7, decode=True)
    expected_state = state.clone()
    expected = emulate(emulator, tensors, expected_state, None, decode=True, split=2)
    first = 2**25  # sequences before the three
    y = torch.full_like(tensors[0], float("nan"))
    launch = launcher.Launch(2, (first + 3) * 2, (*tensors, state, y, None), 1, 1)
    rows, states = first * 64, first * 64 * 64
    emulator.run_shifted(launch, (first * 2, launch.grid), (rows, rows, rows, rows, 0, states, rows, 0))
    assert torch.equal(y, expected) and torch.equal(state, expected_state)


# --- the launcher's Python side around the emulated kernel ----------------------------------------------------


@pytest.fixture
def cpu_launcher(emulator, monkeypatch):
    """wkv6_cupy with its GPU launch replaced by the emulation; records the launches."""
    launches = []

    def run(launch):
        launches.append(launch)
        emulator.run(launch)

    monkeypatch.setattr(launcher, "_check_device", lambda r: None)
    monkeypatch.setattr(launcher, "_run_on_gpu", run)
    monkeypatch.setattr(launcher, "_sm_count", lambda device: SM_COUNT)
    return launches


def test_dispatcher_with_unusual_strides_matches_the_reference(cpu_launcher):
    """A transposed u (as a checkpoint may store time_faaaa), strided inputs and a non-contiguous state: the
    launcher accepts what the reference accepts and updates the caller's state."""
    tensors, state, cu = inputs([4, 11], seed=8)
    r, k, v, w, u = tensors
    u_t = u.t().contiguous().t()
    r_s = torch.cat([r, r], -1)[..., :64]
    state_t = state.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not (u_t.is_contiguous() or r_s.is_contiguous() or state_t.is_contiguous())
    s_ref = state.clone()
    y_ref = wkv6_prefill_torch(r, k, v, w, u, s_ref, cu)
    y = wkv6_prefill(r_s, k, v, w, u_t, state_t, cu[0::1], backend="cupy")
    assert len(cpu_launcher) == 1
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state_t, s_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", ["B=0", "H=0", "T=0"])
def test_nothing_to_compute_launches_nothing(cpu_launcher, shape):
    B, H, T = {"B=0": (0, 2, 0), "H=0": (3, 0, 3), "T=0": (1, 2, 0)}[shape]
    r = torch.randn(T if shape != "H=0" else B, H, 64)
    u, state = torch.randn(H, 64), torch.randn(B, H, 64, 64)
    before = state.clone()
    y = (wkv6_prefill if shape == "T=0" else wkv6_decode)(r, r, r, r, u, state, backend="cupy")
    assert y.shape == r.shape and cpu_launcher == [] and torch.equal(state, before)


def test_decode_through_the_launcher_matches_the_reference(cpu_launcher):
    tensors, state, _ = inputs([1] * 4, dtype=torch.bfloat16, seed=9, decode=True)
    s_ref = state.clone()
    y_ref = wkv6_decode(*tensors, s_ref)
    y = wkv6_decode(*tensors, state, backend="cupy")
    assert cpu_launcher[0].split == launcher.default_split(8, SM_COUNT) == 4
    assert (y.float() - y_ref.float()).abs().max() <= 2e-2 * y_ref.float().abs().max()
    torch.testing.assert_close(state, s_ref, rtol=1e-5, atol=1e-5)


def test_element_size_matches(emulator):
    for dtype, lib in emulator.libs.items():
        lib.wkv6_emul_element_size.restype = ctypes.c_int
        assert lib.wkv6_emul_element_size() == torch.empty((), dtype=dtype).element_size()
