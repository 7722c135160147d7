"""The CuPy WKV6 kernels: NVRTC compile checks, argument checks and backend choice on CPU; results against the
PyTorch reference on a GPU (marked `gpu`, skipped without one). Imports only torch, cupy, pytest and the kernels,
so that it runs on a GPU machine without the evaluation stack."""

import functools
import subprocess
import sys
import timeit
import warnings

import pytest
import torch
from helpers import (
    CUPY_MISSING,
    FakeStream,
    cu_seqlens,
    nvrtc_ptx,
    record_launches,
    rel_err,
    side_stream_behind_busy_default,
    wkv6_inputs,
)

import visualrwkv_eval.kernels as kernels
from visualrwkv_eval.kernels import resolve_backend, wkv6_decode, wkv6_prefill, wkv6_prefill_torch
from visualrwkv_eval.kernels.wkv6 import cpu as wkv6_cpu
from visualrwkv_eval.kernels.wkv6.checks import check_wkv6_args

pytest.importorskip("cupy", reason=CUPY_MISSING)

from visualrwkv_eval.kernels import cupy_common
from visualrwkv_eval.kernels.wkv6 import cupy as wkv6_cupy
from visualrwkv_eval.kernels.wkv6.cupy import (
    SPLITS,
    compile_options,
    kernel_source,
    wkv6_decode_cupy,
    wkv6_prefill_cupy,
)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# r, k, v, w, u in `dtype` and an fp32 state [B, H, 64, 64]; four heads here
inputs = functools.partial(wkv6_inputs, H=4)


# --- CPU: the kernel source compiles, exactly as the runtime builds it ---------------------------------------


@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_source_compiles(dtype, arch):
    ptx = nvrtc_ptx(kernel_source(), "wkv6.cu", (*compile_options(dtype), f"--gpu-architecture=compute_{arch}"))
    for split in SPLITS:
        assert f".entry wkv6_split{split}(" in ptx


def test_compile_error_shows_the_log():
    broken = kernel_source().replace("acc = fmaf(r, s, acc);", "acc = fmaf(r, undeclared, acc);")
    with pytest.raises(pytest.fail.Exception, match="undeclared"):
        nvrtc_ptx(broken, "wkv6.cu", (*compile_options(torch.bfloat16), "--gpu-architecture=compute_90"))


# --- CPU: argument checks and backend choice ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a, "CUDA device"),
        (
            lambda a: [t[..., :32].contiguous() for t in a[:4]] + [a[4][:, :32].contiguous(), a[5][..., :32, :32]],
            "N must be 64",
        ),
        (lambda a: [*a[:3], a[3].half(), *a[4:]], "share one dtype"),  # the shared checks come first
        (lambda a: [*a[:4], a[4][:2], a[5]], "u must be"),
    ],
    ids=["cpu", "head-size", "dtype", "shared-check"],
)
def test_launcher_rejects(change, message):
    with pytest.raises(ValueError, match=message):
        wkv6_prefill_cupy(*change(inputs(5)))


def test_launcher_and_reference_accept_the_same_strides():
    """Strided inputs (a transposed u, as a checkpoint may store time_faaaa) and a strided state pass the shared
    checks in both; the CPU emulation (test_wkv6_cpu_emulation.py) runs them through the kernel."""
    r, k, v, w, u, state = inputs(5)
    u_t, state_t = u.t().contiguous().t(), state.transpose(-1, -2).contiguous().transpose(-1, -2)
    wkv6_prefill_torch(r, k, v, w, u_t, state_t.clone())
    with pytest.raises(ValueError, match="CUDA device"):  # past the shared checks, stopped only by the device
        wkv6_prefill_cupy(r, k, v, w, u_t, state_t)


def test_launcher_and_reference_share_checks():
    r, k, v, w, u, state = inputs(5)
    bad = torch.tensor([0, 3, 2, 5])
    messages = []
    for fn in (wkv6_prefill_torch, wkv6_prefill_cupy):
        with pytest.raises(ValueError) as e:
            fn(r, k, v, w, u, state.expand(3, -1, -1, -1).contiguous(), bad)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    with pytest.raises(ValueError, match="CUDA device"):
        wkv6_decode_cupy(*inputs(3, B=3))


def test_dispatcher_routes_by_backend():
    r, k, v, w, u, state = inputs(5)
    assert torch.equal(wkv6_prefill(r, k, v, w, u, state.clone()), wkv6_prefill_torch(r, k, v, w, u, state.clone()))
    with pytest.raises(ValueError, match="CUDA device"):
        wkv6_prefill(r, k, v, w, u, state, backend="cupy")
    with pytest.raises(ValueError, match="CUDA device"):
        wkv6_decode(*inputs(2, B=2), backend="cupy")
    with pytest.raises(ValueError, match="backend='auto'"):
        wkv6_prefill(r, k, v, w, u, state, backend="auto")


@pytest.fixture
def no_cupy(monkeypatch, fresh_backends):
    """`import cupy` fails, as where the extra is not installed."""
    monkeypatch.setitem(sys.modules, "cupy", None)


def test_resolve_backend(fresh_backends):
    assert resolve_backend("torch", "cuda") == "torch"
    assert resolve_backend("auto", "cpu") == "torch"  # no dtype: nothing probed
    assert resolve_backend("auto", "cpu", torch.bfloat16) == "torch"  # the C kernel is float32 only
    assert resolve_backend("torch", "cpu", torch.float32) == "torch"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "cupy"  # no dtype: the import alone, no GPU needed
    assert resolve_backend("cupy", "cuda:0") == "cupy"
    with pytest.raises(ValueError, match="needs a CUDA device, got cpu"):
        resolve_backend("cupy", "cpu")
    with pytest.raises(ValueError, match="expected one of auto, cupy, torch"):
        resolve_backend("triton", "cuda")


def test_without_cupy_auto_warns_and_cupy_names_the_extra(no_cupy):
    with pytest.warns(RuntimeWarning, match=r"CuPy does not import.*using the PyTorch reference"):
        assert resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(ValueError, match=r"needs CuPy.*visualrwkv-eval\[cuda12\].*visualrwkv-eval\[cuda13\]"):
        resolve_backend("cupy", "cuda")


@pytest.fixture
def failing_compile(monkeypatch, fresh_backends):
    """NVRTC rejects the kernel, as a broken toolkit or driver would make it."""

    def compile_fails(device, dtype, split):
        raise RuntimeError("NVRTC_ERROR_COMPILATION (simulated)")

    monkeypatch.setattr(wkv6_cupy, "_kernel", compile_fails)


def test_auto_probe_falls_back_with_the_reason(failing_compile, caplog):
    with pytest.warns(RuntimeWarning, match=r"not usable on cuda:0 \(RuntimeError: NVRTC_ERROR_COMPILATION"):
        assert resolve_backend("auto", "cuda:0", torch.bfloat16) == "torch"
    assert "WKV backend: torch on cuda:0" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", "cuda:0", torch.bfloat16) == "torch"  # decided once: no second probe


def test_forced_cupy_raises_the_probe_failure(failing_compile):
    with pytest.raises(RuntimeError, match=r"kernel='cupy'.*does not work.*NVRTC_ERROR_COMPILATION"):
        resolve_backend("cupy", "cuda:0", torch.float32)


def test_model_load_probes_with_its_dtype(monkeypatch, tiny_dir):
    """load_model asks for the backend with the model's dtype (which is what probes the kernel), so a broken
    kernel shows at load time; the model asks the same question, answered from the cache, at every forward."""
    import visualrwkv_eval.model.visualrwkv as visualrwkv

    calls = []
    monkeypatch.setattr(visualrwkv, "resolve_backend", lambda *a: calls.append(a) or resolve_backend(*a))
    model = visualrwkv.load_model(str(tiny_dir / "model.pth"), vision_tower=str(tiny_dir / "vision_tower"),
                                  dtype="float32", device="cpu")  # fmt: skip
    assert calls == [("auto", torch.device("cpu"), torch.float32, "wkv6")]
    c_works = wkv6_cpu.probe(torch.float32) is None  # on a CPU, 'auto' takes the C kernel where it builds
    assert model.backend == ("c" if c_works else "torch")
    assert calls[-1] == ("auto", torch.device("cpu"), torch.float32, "wkv6")


def test_nothing_to_compute_launches_nothing(monkeypatch):
    """B * H = 0 (or no time steps): no launch at all, since CuPy would clamp an empty grid to one block."""

    def no_launch(launch):
        raise AssertionError(f"launched {launch}")

    monkeypatch.setattr(wkv6_cupy, "_check_device", lambda r: None)
    monkeypatch.setattr(wkv6_cupy, "_sm_count", lambda device: 132)
    monkeypatch.setattr(wkv6_cupy, "_run_on_gpu", no_launch)
    for B, H in ((0, 4), (3, 0)):
        r, u, state = torch.randn(B, H, 64), torch.randn(H, 64), torch.randn(B, H, 64, 64)
        assert wkv6_decode_cupy(r, r, r, r, u, state).shape == (B, H, 64)
    r, u, state = torch.randn(0, 2, 64), torch.randn(2, 64), torch.randn(1, 2, 64, 64)
    assert wkv6_prefill_cupy(r, r, r, r, u, state).shape == (0, 2, 64)


def test_launch_goes_on_torchs_current_stream(monkeypatch):
    """Without a GPU: the launch receives CuPy's view of torch's current stream (each time the current one, one
    CuPy object per stream) and no deprecated API is used. The GPU test below shows the same with real streams."""
    launches, current = record_launches(monkeypatch, wkv6_cupy)
    r, u, state = torch.empty(1, 2, 64, device="meta"), torch.empty(2, 64, device="meta"), torch.empty(1, 2, 64, 64)
    launch = wkv6_cupy.Launch(1, 2, (r, r, r, r, u, state.to("meta"), r, None), 1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        wkv6_cupy._run_on_gpu(launch)
        wkv6_cupy._run_on_gpu(launch)
        current[0] = FakeStream(0xB000)
        wkv6_cupy._run_on_gpu(launch)
    assert [s.ptr for _, s in launches] == [0xA000, 0xA000, 0xB000]
    assert launches[0][1] is launches[1][1]  # cached per (device, stream)
    cupy_common._cupy_stream.cache_clear()


def test_checks_are_cheap():
    """A decode step checks its arguments once per layer: keep that to microseconds."""
    r, u, state = torch.randn(16, 32, 64), torch.randn(32, 64), torch.randn(16, 32, 64, 64)
    check = lambda: check_wkv6_args(r, r, r, r, u, state, None, decode=True)  # noqa: E731
    seconds = min(timeit.repeat(check, number=200, repeat=5)) / 200
    assert seconds < 20e-6, f"{seconds * 1e6:.1f} us per check"


def test_offsets_are_uploaded_once_per_prefill(monkeypatch):
    """Every layer of a prefill passes the same CPU offsets: one host-to-device copy serves them all, and new
    values (even in the same tensor, which inference mode cannot version) get a new copy."""
    monkeypatch.setattr(cupy_common, "_uploaded", None)
    copies = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        copies.append(args)
        return real_to(self, *args, **kwargs)

    meta = torch.device("meta")  # stands in for a GPU: a real device, not the CPU
    with torch.inference_mode():
        cu = torch.tensor([0, 4, 9])
    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    first = [wkv6_cupy._device_offsets(cu, meta) for _ in range(3)]
    uploads = sum(1 for a in copies if meta in a)
    assert uploads == 1 and all(f is first[0] for f in first)
    with torch.inference_mode():
        cu[1] = 5
    wkv6_cupy._device_offsets(cu, meta)
    assert sum(1 for a in copies if meta in a) == 2


def test_default_split():
    assert wkv6_cupy.default_split(32, 132) == 4  # batch 1 of a 32-head model: 128 blocks
    assert wkv6_cupy.default_split(96, 132) == 2
    assert wkv6_cupy.default_split(16 * 32, 132) == 1
    assert wkv6_cupy.default_split(1, 132) == SPLITS[-1]


def test_importing_kernels_stays_light():
    code = (
        "import sys, visualrwkv_eval.kernels; print(sorted({'cupy', 'transformers', 'lmms_eval'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- GPU: kernels against the reference ----------------------------------------------------------------------


def reference(r, k, v, w, u, state, cu_seqlens=None):
    """The PyTorch reference on the CPU (no TF32 anywhere): y and the final state."""
    state = state.cpu().clone()
    y = wkv6_prefill_torch(r.cpu(), k.cpu(), v.cpu(), w.cpu(), u.cpu(), state, cu_seqlens)
    return y, state


def cuda_inputs(T, **kw):
    return inputs(T, device="cuda", **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestOnGPU:
    @pytest.mark.parametrize("split", SPLITS)
    @pytest.mark.parametrize("T", [1, 9, 100, 333])
    @pytest.mark.parametrize("decay", ["realistic", "extreme"])
    def test_fp32_matches_reference(self, T, split, decay):
        r, k, v, w, u, state = cuda_inputs(T, seed=T, decay=decay)
        y_ref, s_ref = reference(r, k, v, w, u, state)
        y = wkv6_prefill_cupy(r, k, v, w, u, state, split=split)
        assert rel_err(y, y_ref) <= 1e-5
        assert rel_err(state, s_ref) <= 1e-5

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
    def test_half_precision_matches_reference(self, dtype):
        r, k, v, w, u, state = cuda_inputs(200, H=8, dtype=dtype, seed=1)
        y_ref, s_ref = reference(r, k, v, w, u, state)
        y = wkv6_prefill_cupy(r, k, v, w, u, state)
        assert y.dtype == dtype
        assert (y.float().cpu() - y_ref.float()).abs().mean().item() <= 2e-3
        assert rel_err(state, s_ref) <= 1e-5

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_every_split_is_bit_identical(self, dtype):
        r, k, v, w, u, state = cuda_inputs(77, dtype=dtype, B=3, seed=2)
        cu = torch.tensor([0, 30, 30, 77])
        results = []
        for split in SPLITS:
            s = state.clone()
            results.append((wkv6_prefill_cupy(r, k, v, w, u, s, cu, split=split), s))
        for y, s in results[1:]:
            assert torch.equal(y, results[0][0]) and torch.equal(s, results[0][1])

    @pytest.mark.parametrize("cut", [1, 8, 13])
    def test_state_carry(self, cut):
        r, k, v, w, u, state = cuda_inputs(40, dtype=torch.bfloat16, seed=cut)
        whole, parts = state.clone(), state.clone()
        y = wkv6_prefill_cupy(r, k, v, w, u, whole)
        y1 = wkv6_prefill_cupy(r[:cut], k[:cut], v[:cut], w[:cut], u, parts)
        y2 = wkv6_prefill_cupy(r[cut:], k[cut:], v[cut:], w[cut:], u, parts)
        assert torch.equal(torch.cat([y1, y2]), y) and torch.equal(parts, whole)

    @pytest.mark.parametrize("offsets_on", ["cpu", "cuda"])
    def test_packed_batch_equals_separate_runs(self, offsets_on):
        lengths = [5, 0, 1, 40, 0, 17]
        seqs = [cuda_inputs(n, seed=i, dtype=torch.bfloat16) for i, n in enumerate(lengths)]
        u = seqs[0][4]
        packed = [torch.cat([s[j] for s in seqs]) for j in range(4)]
        state = torch.cat([s[5] for s in seqs])
        initial = state.clone()
        cu = cu_seqlens(lengths)
        y = wkv6_prefill_cupy(*packed, u, state, cu.to(offsets_on))
        for i, s in enumerate(seqs):
            alone = s[5].clone()
            y_i = wkv6_prefill_cupy(*s[:4], u, alone)
            assert torch.equal(y[cu[i] : cu[i + 1]], y_i) and torch.equal(state[i], alone[0])
        assert torch.equal(state[1], initial[1]) and torch.equal(state[4], initial[4])  # length 0: untouched
        y_ref, s_ref = reference(*packed, u, initial, cu)
        assert (y.float().cpu() - y_ref.float()).abs().mean().item() <= 2e-3
        assert rel_err(state, s_ref) <= 1e-5

    @pytest.mark.parametrize("B", [1, 5, 64])
    def test_decode_matches_reference_step(self, B):
        r, k, v, w, u, state = cuda_inputs(B, B=B, seed=B)
        s_ref = state.cpu().clone()
        y_ref = wkv6_decode(r.cpu(), k.cpu(), v.cpu(), w.cpu(), u.cpu(), s_ref)
        as_prefill = state.clone()
        y_prefill = wkv6_prefill_cupy(r, k, v, w, u, as_prefill, torch.arange(B + 1))
        y = wkv6_decode(r, k, v, w, u, state, backend="cupy")
        assert rel_err(y, y_ref) <= 1e-5 and rel_err(state, s_ref) <= 1e-5
        assert torch.equal(y, y_prefill) and torch.equal(state, as_prefill)

    def test_runs_on_the_current_stream(self):
        """With the default stream busy for ~0.5 s, a launch on a side stream must finish first: a kernel queued
        on the default (or legacy null) stream instead would leave y and the state unwritten when read."""
        r, k, v, w, u, state = cuda_inputs(64, dtype=torch.bfloat16, seed=3)
        expected_state = state.clone()
        expected = wkv6_prefill_cupy(r, k, v, w, u, expected_state)
        y, state_after = side_stream_behind_busy_default(
            lambda: (wkv6_prefill(r, k, v, w, u, state, backend="cupy"), state)
        )
        assert torch.equal(y, expected) and torch.equal(state_after, expected_state)

    def test_no_deprecated_stream_api(self):
        r, k, v, w, u, state = cuda_inputs(3, B=3)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            wkv6_decode_cupy(r, k, v, w, u, state)
            torch.cuda.synchronize()

    def test_decode_replayed_from_a_cuda_graph_equals_eager(self):
        from visualrwkv_eval.kernels.cuda_graph import GraphedStep

        steps = [cuda_inputs(16, B=16, dtype=torch.bfloat16, seed=s) for s in range(4)]
        u, initial = steps[0][4], steps[0][5]
        wkv6_decode_cupy(*steps[0][:4], u, initial.clone())  # eager once: compiled, allocator warm
        eager_state, graph_state = initial.clone(), initial.clone()
        graphed = GraphedStep(lambda r, k, v, w: wkv6_decode_cupy(r, k, v, w, u, graph_state), *steps[0][:4])
        for step in steps:
            y_eager = wkv6_decode_cupy(*step[:4], u, eager_state)
            y_graph = graphed(*step[:4]).clone()
            assert torch.equal(y_graph, y_eager)
        assert torch.equal(graph_state, eager_state)

    def test_offsets_on_the_gpu_with_strides(self):
        lengths = [5, 0, 17]
        r, k, v, w, u, state = cuda_inputs(22, B=3, seed=4)
        cu = cu_seqlens(lengths)
        strided = torch.stack([cu, cu], 1).cuda()[:, 0].to(torch.int32)
        assert not strided.is_contiguous() or strided.dtype != torch.int64
        s_cpu, s_gpu = state.clone(), state.clone()
        y_cpu = wkv6_prefill_cupy(r, k, v, w, u, s_cpu, cu)
        y_gpu = wkv6_prefill_cupy(r, k, v, w, u, s_gpu, torch.stack([cu, cu], 1).cuda()[:, 0])
        assert torch.equal(y_gpu, y_cpu) and torch.equal(s_gpu, s_cpu)
        assert torch.equal(wkv6_prefill_cupy(r, k, v, w, u, state.clone(), strided), y_cpu)

    def test_unusual_strides_match_contiguous(self):
        r, k, v, w, u, state = cuda_inputs(30, seed=5)
        s_ref = state.clone()
        y_ref = wkv6_prefill_cupy(r, k, v, w, u, s_ref)
        u_t = u.t().contiguous().t()
        state_t = state.transpose(-1, -2).contiguous().transpose(-1, -2)
        r_s = torch.cat([r, r], -1)[..., :64]
        y = wkv6_prefill_cupy(r_s, k, v, w, u_t, state_t)
        assert torch.equal(y, y_ref) and torch.equal(state_t, s_ref)

    def test_empty_launches(self):
        for B, H in ((0, 4), (2, 0)):
            r, u, state = torch.randn(B, H, 64, device="cuda"), torch.randn(H, 64, device="cuda"), None
            state = torch.randn(B, H, 64, 64, device="cuda")
            assert wkv6_decode_cupy(r, r, r, r, u, state).shape == (B, H, 64)
        torch.cuda.synchronize()

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_probe_passes(self, dtype):
        kernels.probe_cupy.cache_clear()
        assert kernels.probe_cupy(torch.device("cuda", torch.cuda.current_device()), dtype) is None
