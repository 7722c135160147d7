"""The CUDA kernel itself (kernels/wkv7/wkv7.cu, unchanged) executed on the CPU, against a float64 recurrence.

tests/wkv7_emulator.py compiles the kernel with g++ against the CUDA shim of tests/cuda_emul/ (one std::thread per
CUDA thread, barriers for __syncthreads) and runs launches planned by the real launcher (kernels/wkv7/cupy.plan)
on buffers fenced by guard pages, counting how many blocks write each element of y. Skipped, with the reason,
where no g++ >= 11 is installed. tests/test_wkv_thread_sanitizer.py repeats a launch under ThreadSanitizer.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import CUPY_MISSING, MANTISSA_BITS, rel_err
from helpers import ulps as helpers_ulps
from test_wkv7_reference import naive_wkv7

import visualrwkv_eval.kernels as kernels
from visualrwkv_eval.kernels.wkv7 import wkv7_decode_torch, wkv7_prefill_torch

pytest.importorskip("cupy", reason=CUPY_MISSING)  # the launcher plans every emulated launch
import wkv7_emulator as emul
from wkv_emulator import build_edited

from visualrwkv_eval.kernels.wkv7 import cupy as launcher

GXX, WHY_NOT = emul.gxx()
pytestmark = pytest.mark.skipif(GXX is None, reason=WHY_NOT)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LENGTHS = [0, 1, 7, 8, 9, 64, 200]  # empty, single step, around the 8-step staging chunk, and a longer one


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """The kernel of every dtype, compiled once per test session."""
    return emul.Emulator(emul.build(tmp_path_factory.mktemp("wkv7_emul"), DTYPES))


def inputs(lengths, H=2, dtype=torch.float32, seed=0, decode=False):
    """Packed r, w, k, v, a, b in `dtype` as RWKV-7 makes them, an fp32 state per sequence, the offsets (None for
    decode)."""
    T = len(lengths) if decode else sum(lengths)
    *x, state = launcher.probe_inputs(T, H, B=len(lengths), seed=seed)
    cu = None if decode else torch.tensor([0, *lengths]).cumsum(0)
    return [t.to(dtype) for t in x], state, cu


def emulate(emulator, tensors, state, cu, *, decode=False, align="end"):
    """y from one emulated launch (state updated in place); every element of y written by exactly one block."""
    y, launch = launcher.plan(*tensors, state, cu, decode=decode)
    assert launch is not None
    counts = emulator.run(launch, align=align)
    assert launch.tensors[launcher.STATE] is state  # contiguous and aligned: updated in place
    assert torch.equal(counts, torch.ones_like(counts)), f"write counts {counts.unique(return_counts=True)}"
    return y


def reference(tensors, state, cu):
    """y and final state of each sequence in float64, from the token-by-token recurrence."""
    bounds = [0, tensors[0].shape[0]] if cu is None else cu.tolist()
    ys, states = [], []
    for i, (s, e) in enumerate(itertools.pairwise(bounds)):
        y, S = naive_wkv7(*(t[s:e] for t in tensors), state[i])
        ys.append(y)
        states.append(S)
    return torch.cat(ys), torch.stack(states)


def ulps(y: torch.Tensor, ref: torch.Tensor) -> float:
    """helpers.ulps with this kernel's fp32 slack (1e-5 of the largest |y|)."""
    return helpers_ulps(y, ref, fp32_slack=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_packed_prefill_matches_float64_recurrence(emulator, dtype):
    tensors, state, cu = inputs(LENGTHS, H=1, dtype=dtype)
    y_ref, s_ref = reference(tensors, state, cu)
    y = emulate(emulator, tensors, state, cu)
    assert y.dtype == dtype
    assert rel_err(state, s_ref) <= 2e-6
    if dtype == torch.float32:
        assert rel_err(y, y_ref) <= 2e-6
    else:  # fp32 arithmetic, one rounding to the storage dtype at the end
        assert ulps(y, y_ref) <= 1.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_the_torch_reference(emulator, dtype):
    """The two implementations behind kernels.get("wkv7", ...) agree (bf16: within one rounding of the output)."""
    tensors, state, cu = inputs([30, 3, 0, 41], dtype=dtype, seed=11)
    s_ref = state.clone()
    y_ref = wkv7_prefill_torch(*tensors, s_ref, cu)
    y = emulate(emulator, tensors, state, cu)
    assert rel_err(state, s_ref) <= 2e-6
    tolerance = 2e-6 if dtype == torch.float32 else 2.0 ** -MANTISSA_BITS[dtype]
    assert ((y.double() - y_ref.double()).abs() <= tolerance * y_ref.double().abs() + 1e-5).all()


def test_packed_batch_equals_separate_runs(emulator):
    tensors, state, cu = inputs(LENGTHS, H=1, dtype=torch.bfloat16, seed=2)
    initial = state.clone()
    y = emulate(emulator, tensors, state, cu)
    for i, (a, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if a == e:
            assert torch.equal(state[i], initial[i])  # an empty sequence leaves its state alone
            continue
        alone = initial[i : i + 1].clone()
        y_i = emulate(emulator, [t[a:e] for t in tensors], alone, None)
        assert torch.equal(y[a:e], y_i) and torch.equal(state[i], alone[0])


@pytest.mark.parametrize("cut", [1, 8, 13])
def test_state_carry_at_chunk_boundaries(emulator, cut):
    tensors, state, _ = inputs([40], seed=cut)
    whole, parts = state.clone(), state.clone()
    y = emulate(emulator, tensors, whole, None)
    y1 = emulate(emulator, [t[:cut] for t in tensors], parts, None)
    y2 = emulate(emulator, [t[cut:] for t in tensors], parts, None)
    assert torch.equal(torch.cat([y1, y2]), y) and torch.equal(parts, whole)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_equals_one_step_prefill(emulator, dtype):
    tensors, state, _ = inputs([1] * 5, dtype=dtype, seed=3, decode=True)
    as_prefill = state.clone()
    y_prefill = emulate(emulator, tensors, as_prefill, torch.arange(6))
    y_ref, s_ref = reference(tensors, state, torch.arange(6))
    y = emulate(emulator, tensors, state, None, decode=True)
    assert torch.equal(y, y_prefill) and torch.equal(state, as_prefill)
    assert rel_err(state, s_ref) <= 2e-6
    assert (rel_err(y, y_ref) <= 2e-6) if dtype == torch.float32 else ulps(y, y_ref) <= 1.0


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
    tensors, state, _ = inputs([13], seed=5)  # the second staging chunk reads row 13, past the end
    _, launch = launcher.plan(*tensors, state, None, decode=False)
    with pytest.raises(emul.LaunchFailed, match="SIGSEGV"):
        broken.run(launch)


def test_denormals_flush_to_zero_as_with_ftz(emulator):
    """-ftz=true on the GPU: a denormal state reads as zero. A tiny state with k = 0, b = 0 and decays near 1 ends
    at exactly zero (without FTZ it would stay near 1e-39)."""
    (r, w, k, v, a, _), state, _ = inputs([9], seed=10)
    state.fill_(1e-39)
    zero = torch.zeros_like(k)
    y = emulate(emulator, [r, torch.full_like(w, -20.0), zero, v, a, zero], state, None)
    assert torch.count_nonzero(state) == 0 and torch.count_nonzero(y) == 0


def test_element_size_matches(emulator):
    for dtype, lib in emulator.libs.items():
        assert lib.wkv7_emul_element_size() == torch.empty((), dtype=dtype).element_size()


# --- the launcher's Python side around the emulated kernel ----------------------------------------------------


@pytest.fixture
def cpu_launcher(emulator, monkeypatch):
    """kernels/wkv7/cupy.py with its GPU launch replaced by the emulation; records the launches."""
    launches = []

    def run(launch):
        launches.append(launch)
        emulator.run(launch)

    monkeypatch.setattr(launcher, "_check_device", lambda r: None)
    monkeypatch.setattr(launcher, "_run_on_gpu", run)
    return launches


def test_registry_with_unusual_strides_matches_the_reference(cpu_launcher):
    """Strided inputs, a transposed state and a state 4 bytes off 16-byte alignment (the kernel moves rows as
    float4): the launcher accepts what the reference accepts and updates the caller's state."""
    prefill, _ = kernels.get("wkv7", "cupy")
    tensors, state, cu = inputs([4, 11], seed=8)
    r_s = torch.cat([tensors[0], tensors[0]], -1)[..., :64]
    state_t = state.transpose(-1, -2).contiguous().transpose(-1, -2)
    state_off = torch.empty(state.numel() + 1)[1:].view(state.shape)
    state_off.copy_(state)
    assert not (r_s.is_contiguous() or state_t.is_contiguous()) and state_off.data_ptr() % 16 != 0
    s_ref = state.clone()
    y_ref = wkv7_prefill_torch(*tensors, s_ref, cu)
    for s in (state_t, state_off):
        y = prefill(r_s, *tensors[1:], s, cu[0::1])
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)
    assert len(cpu_launcher) == 2


@pytest.mark.parametrize("shape", ["B=0", "H=0", "T=0"])
def test_nothing_to_compute_launches_nothing(cpu_launcher, shape):
    B, H, T = {"B=0": (0, 2, 0), "H=0": (3, 0, 3), "T=0": (1, 2, 0)}[shape]
    r = torch.randn(T if shape != "H=0" else B, H, 64)
    state = torch.randn(B, H, 64, 64)
    before = state.clone()
    prefill, decode = kernels.get("wkv7", "cupy")
    y = (prefill if shape == "T=0" else decode)(r, r, r, r, r, r, state)
    assert y.shape == r.shape and cpu_launcher == [] and torch.equal(state, before)


def test_decode_through_the_launcher_matches_the_reference(cpu_launcher):
    tensors, state, _ = inputs([1] * 4, dtype=torch.bfloat16, seed=9, decode=True)
    s_ref = state.clone()
    y_ref = wkv7_decode_torch(*tensors, s_ref)
    y = kernels.get("wkv7", "cupy")[1](*tensors, state)
    assert cpu_launcher[0].grid == 4 * 2 and cpu_launcher[0].seq_len == 1
    assert (y.float() - y_ref.float()).abs().max() <= 2e-2 * y_ref.float().abs().max()
    torch.testing.assert_close(state, s_ref, rtol=1e-5, atol=1e-5)
