"""The CuPy WKV7 kernel: NVRTC compile checks, argument checks, registry and backend choice on CPU; results against
the PyTorch reference on a GPU (marked `gpu`, skipped without one; scripts/gpu_check.py runs them). Imports only
torch, cupy, pytest and the kernels, so that it runs on a GPU machine without the evaluation stack."""

import warnings

import pytest
import torch
from helpers import CUPY_MISSING, FakeStream, nvrtc_ptx, record_launches, rel_err, side_stream_behind_busy_default

import visualrwkv_eval.kernels as kernels
from visualrwkv_eval.kernels import resolve_backend
from visualrwkv_eval.kernels.wkv7 import wkv7_decode_torch, wkv7_prefill_torch

pytest.importorskip("cupy", reason=CUPY_MISSING)

from visualrwkv_eval.kernels import cupy_common
from visualrwkv_eval.kernels.wkv7 import cupy as wkv7_cupy
from visualrwkv_eval.kernels.wkv7.cupy import (
    compile_options,
    kernel_source,
    probe_inputs,
    wkv7_decode_cupy,
    wkv7_prefill_cupy,
)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def inputs(T, H=4, B=1, seed=0, dtype=torch.float32, device="cpu"):
    """r, w, k, v, a, b [T, H, 64] in `dtype` as RWKV-7 makes them and an fp32 state [B, H, 64, 64]."""
    *x, state = probe_inputs(T, H, B=B, seed=seed)
    return [t.to(device, dtype) for t in x] + [state.to(device)]


# --- CPU: the kernel source compiles, exactly as the runtime builds it ---------------------------------------


@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_source_compiles(dtype, arch):
    ptx = nvrtc_ptx(kernel_source(), "wkv7.cu", (*compile_options(dtype), f"--gpu-architecture=compute_{arch}"))
    assert ".entry wkv7(" in ptx


def test_compile_error_shows_the_log():
    broken = kernel_source().replace("const float v_i = sv[c][i];", "const float v_i = undeclared;")
    with pytest.raises(pytest.fail.Exception, match="undeclared"):
        nvrtc_ptx(broken, "wkv7.cu", (*compile_options(torch.bfloat16), "--gpu-architecture=compute_90"))


# --- CPU: argument checks, registry and backend choice --------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x: x, "CUDA device"),
        (lambda x: [t[..., :32].contiguous() for t in x[:6]] + [x[6][..., :32, :32]], "N must be 64"),
        (lambda x: [*x[:3], x[3].half(), *x[4:]], "share one dtype"),  # the shared checks come first
        (lambda x: [*x[:6], x[6][:, :2]], "state must be"),
    ],
    ids=["cpu", "head-size", "dtype", "shared-check"],
)
def test_launcher_rejects(change, message):
    with pytest.raises(ValueError, match=message):
        wkv7_prefill_cupy(*change(inputs(5)))


def test_launcher_and_reference_share_checks():
    *x, state = inputs(5)
    bad = torch.tensor([0, 3, 2, 5])
    messages = []
    for fn in (wkv7_prefill_torch, wkv7_prefill_cupy):
        with pytest.raises(ValueError) as e:
            fn(*x, state.expand(3, -1, -1, -1).contiguous(), bad)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    with pytest.raises(ValueError, match="CUDA device"):
        wkv7_decode_cupy(*inputs(3, B=3))


def test_registry_routes_by_backend():
    assert kernels.get("wkv7", "torch") == (wkv7_prefill_torch, wkv7_decode_torch)
    assert kernels.get("wkv7", "cupy") == (wkv7_prefill_cupy, wkv7_decode_cupy)
    with pytest.raises(ValueError, match="backend='auto'"):
        kernels.get("wkv7", "auto")


@pytest.fixture
def failing_compile(monkeypatch, fresh_backends):
    """NVRTC rejects the WKV7 kernel (only that one), as a broken toolkit or driver would make it."""

    def compile_fails(device, dtype):
        raise RuntimeError("NVRTC_ERROR_COMPILATION (simulated wkv7)")

    monkeypatch.setattr(wkv7_cupy, "_kernel", compile_fails)


def test_auto_probe_falls_back_with_the_reason(failing_compile, caplog):
    with pytest.warns(RuntimeWarning, match=r"not usable on cuda:0 \(RuntimeError: NVRTC_ERROR_COMPILATION"):
        assert resolve_backend("auto", "cuda:0", torch.bfloat16, op="wkv7") == "torch"
    assert "WKV backend: torch on cuda:0" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", "cuda:0", torch.bfloat16, op="wkv7") == "torch"  # decided once


def test_forced_cupy_raises_the_probe_failure(failing_compile):
    with pytest.raises(RuntimeError, match=r"kernel='cupy'.*does not work.*NVRTC_ERROR_COMPILATION"):
        resolve_backend("cupy", "cuda:0", torch.float32, op="wkv7")


def test_probe_failure_is_the_ops_own(failing_compile):
    """The WKV7 probe is asked for op wkv7 only; the WKV6 probe never runs into the WKV7 kernel."""
    assert "simulated wkv7" in kernels.probe_cupy(torch.device("cuda", 0), torch.float16, "wkv7")
    assert kernels.PROBES["wkv7"] == "wkv7.cupy"


def test_launch_goes_on_torchs_current_stream(monkeypatch):
    """Without a GPU: the launch receives CuPy's view of torch's current stream, each time the current one."""
    launches, current = record_launches(monkeypatch, wkv7_cupy)
    r, state = torch.empty(1, 2, 64, device="meta"), torch.empty(1, 2, 64, 64, device="meta")
    launch = wkv7_cupy.Launch(2, (r, r, r, r, r, r, state, r, None), 1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        wkv7_cupy._run_on_gpu(launch)
        current[0] = FakeStream(0xB000)
        wkv7_cupy._run_on_gpu(launch)
    assert [s.ptr for _, s in launches] == [0xA000, 0xB000]
    grid, block, args = launches[0][0]
    assert grid == (2,) and block == (64,) and len(args) == 11 and args[-2:] == (1, 2)
    cupy_common._cupy_stream.cache_clear()


# --- GPU: the kernel against the reference --------------------------------------------------------------------


def reference(r, w, k, v, a, b, state, cu_seqlens=None):
    """The PyTorch reference on the CPU (no TF32 anywhere): y and the final state."""
    state = state.cpu().clone()
    y = wkv7_prefill_torch(*(t.cpu() for t in (r, w, k, v, a, b)), state, cu_seqlens)
    return y, state


def cuda_inputs(T, **kw):
    return inputs(T, device="cuda", **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestOnGPU:
    @pytest.mark.parametrize("T", [1, 9, 100, 333])
    def test_fp32_matches_reference(self, T):
        *x, state = cuda_inputs(T, seed=T)
        y_ref, s_ref = reference(*x, state)
        y = wkv7_prefill_cupy(*x, state)
        assert rel_err(y, y_ref) <= 1e-5 and rel_err(state, s_ref) <= 1e-5

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_long_packed_prefill_with_state(self, dtype):
        """4096 + 1 + 700 tokens, 8 heads, in one packed launch with a state per sequence."""
        lengths = [4096, 1, 0, 700]
        *x, state = cuda_inputs(sum(lengths), H=8, B=len(lengths), dtype=dtype, seed=1)
        cu = torch.tensor([0, *lengths]).cumsum(0)
        initial = state.clone()
        y_ref, s_ref = reference(*x, state, cu)
        y = wkv7_prefill_cupy(*x, state, cu)
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert rel_err(state, s_ref) <= 1e-5
        if dtype == torch.float32:
            assert rel_err(y, y_ref) <= 1e-5
        else:
            assert (y.float().cpu() - y_ref.float()).abs().mean().item() <= 2e-3 * y_ref.float().abs().mean().item()
        assert torch.equal(state[2], initial[2])  # length 0: untouched

    @pytest.mark.parametrize("offsets_on", ["cpu", "cuda"])
    def test_packed_batch_equals_separate_runs(self, offsets_on):
        lengths = [5, 0, 1, 40, 17]
        seqs = [cuda_inputs(n, seed=i, dtype=torch.bfloat16) for i, n in enumerate(lengths)]
        packed = [torch.cat([s[j] for s in seqs]) for j in range(6)]
        state = torch.cat([s[6] for s in seqs])
        cu = torch.tensor([0, *lengths]).cumsum(0)
        y = wkv7_prefill_cupy(*packed, state, cu.to(offsets_on))
        for i, s in enumerate(seqs):
            alone = s[6].clone()
            y_i = wkv7_prefill_cupy(*s[:6], alone)
            assert torch.equal(y[cu[i] : cu[i + 1]], y_i) and torch.equal(state[i], alone[0])

    @pytest.mark.parametrize("cut", [1, 8, 13])
    def test_state_carry(self, cut):
        *x, state = cuda_inputs(40, dtype=torch.bfloat16, seed=cut)
        whole, parts = state.clone(), state.clone()
        y = wkv7_prefill_cupy(*x, whole)
        y1 = wkv7_prefill_cupy(*(t[:cut] for t in x), parts)
        y2 = wkv7_prefill_cupy(*(t[cut:] for t in x), parts)
        assert torch.equal(torch.cat([y1, y2]), y) and torch.equal(parts, whole)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("B", [1, 64])
    def test_decode_matches_reference_and_prefill(self, B, dtype):
        *x, state = cuda_inputs(B, B=B, seed=B, dtype=dtype)
        s_ref = state.cpu().clone()
        y_ref = wkv7_decode_torch(*(t.cpu() for t in x), s_ref)
        as_prefill = state.clone()
        y_prefill = wkv7_prefill_cupy(*x, as_prefill, torch.arange(B + 1))
        y = kernels.get("wkv7", "cupy")[1](*x, state)
        assert rel_err(state, s_ref) <= 1e-5
        assert rel_err(y, y_ref) <= (1e-5 if dtype == torch.float32 else 1e-2)
        assert torch.equal(y, y_prefill) and torch.equal(state, as_prefill)

    def test_runs_on_the_current_stream(self):
        """With the default stream busy for ~0.5 s, a launch on a side stream must finish first: a kernel queued
        on the default (or legacy null) stream instead would leave y and the state unwritten when read."""
        *x, state = cuda_inputs(64, dtype=torch.bfloat16, seed=3)
        expected_state = state.clone()
        expected = wkv7_prefill_cupy(*x, expected_state)
        y, state_after = side_stream_behind_busy_default(lambda: (wkv7_prefill_cupy(*x, state), state))
        assert torch.equal(y, expected) and torch.equal(state_after, expected_state)

    def test_decode_replayed_from_a_cuda_graph_equals_eager(self):
        from visualrwkv_eval.kernels.cuda_graph import GraphedStep

        steps = [cuda_inputs(16, B=16, dtype=torch.bfloat16, seed=s) for s in range(4)]
        initial = steps[0][6]
        wkv7_decode_cupy(*steps[0][:6], initial.clone())  # eager once: compiled, allocator warm
        eager_state, graph_state = initial.clone(), initial.clone()
        graphed = GraphedStep(lambda *x: wkv7_decode_cupy(*x, graph_state), *steps[0][:6])
        for step in steps:
            y_eager = wkv7_decode_cupy(*step[:6], eager_state)
            assert torch.equal(graphed(*step[:6]).clone(), y_eager)
        assert torch.equal(graph_state, eager_state)

    def test_unusual_strides_and_alignment_match_contiguous(self):
        *x, state = cuda_inputs(30, seed=5)
        s_ref = state.clone()
        y_ref = wkv7_prefill_cupy(*x, s_ref)
        r_s = torch.cat([x[0], x[0]], -1)[..., :64]
        state_t = state.transpose(-1, -2).contiguous().transpose(-1, -2)
        state_off = torch.empty(state.numel() + 1, device="cuda")[1:].view(state.shape)
        state_off.copy_(state)
        for s in (state_t, state_off):
            assert torch.equal(wkv7_prefill_cupy(r_s, *x[1:], s), y_ref) and torch.equal(s, s_ref)

    def test_empty_launches(self):
        for B, H in ((0, 4), (2, 0)):
            r, state = torch.randn(B, H, 64, device="cuda"), torch.randn(B, H, 64, 64, device="cuda")
            assert wkv7_decode_cupy(r, r, r, r, r, r, state).shape == (B, H, 64)
        torch.cuda.synchronize()

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_probe_passes(self, dtype):
        kernels.probe_cupy.cache_clear()
        assert kernels.probe_cupy(torch.device("cuda", torch.cuda.current_device()), dtype, "wkv7") is None
