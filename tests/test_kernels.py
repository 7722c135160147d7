"""The CuPy WKV6 kernels: NVRTC compile checks, argument checks and backend choice on CPU; results against the
PyTorch reference on a GPU (marked `gpu`, skipped without one). Imports only torch, cupy, pytest and the kernels,
so that it runs on a GPU machine without the evaluation stack."""

import subprocess
import sys

import pytest
import torch
from cupy.cuda import nvrtc

import visualrwkv_eval.kernels as kernels
from visualrwkv_eval.kernels import resolve_backend, wkv6_decode, wkv6_prefill, wkv6_prefill_torch
from visualrwkv_eval.kernels.wkv6_cupy import (
    SPLITS,
    compile_options,
    default_split,
    kernel_source,
    wkv6_decode_cupy,
    wkv6_prefill_cupy,
)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def inputs(T, H=4, B=1, seed=0, dtype=torch.float32, device="cpu", decay="realistic"):
    """r, k, v, w, u in `dtype` and an fp32 state [B, H, 64, 64]."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(T, H, 64, generator=g) for _ in range(3))
    if decay == "realistic":  # decays from 0.9975 down to 0.011
        w = torch.rand(T, H, 64, generator=g) * 7.5 - 6
    else:  # decays within 1e-9 of 1 and ~1e-24 of 0, mixed over time
        w = torch.where(torch.rand(T, H, 64, generator=g) < 0.5, -20.0, 4.0) + torch.randn(T, H, 64, generator=g)
    u = torch.randn(H, 64, generator=g)
    state = torch.randn(B, H, 64, 64, generator=g)
    return [t.to(device, dtype) for t in (r, k, v, w, u)] + [state.to(device)]


def rel_err(a, b):
    return ((a.double().cpu() - b.double().cpu()).abs().max() / b.double().cpu().abs().max()).item()


# --- CPU: the kernel source compiles, exactly as the runtime builds it ---------------------------------------


def nvrtc_ptx(source: str, options: tuple[str, ...]) -> str:
    """PTX from NVRTC without a device; a compile error fails the test with NVRTC's log."""
    prog = nvrtc.createProgram(source, "wkv6.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError as e:
            pytest.fail(f"NVRTC {options}: {e}\n{nvrtc.getProgramLog(prog)}")
        return nvrtc.getPTX(prog).decode(errors="replace")
    finally:
        nvrtc.destroyProgram(prog)


@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_source_compiles(dtype, arch):
    ptx = nvrtc_ptx(kernel_source(), (*compile_options(dtype), f"--gpu-architecture=compute_{arch}"))
    for split in SPLITS:
        assert f".entry wkv6_split{split}(" in ptx


def test_compile_error_shows_the_log():
    broken = kernel_source().replace("const float kv = k * v;", "const float kv = k * undeclared;")
    with pytest.raises(pytest.fail.Exception, match="undeclared"):
        nvrtc_ptx(broken, (*compile_options(torch.bfloat16), "--gpu-architecture=compute_90"))


# --- CPU: argument checks and backend choice ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a, "CUDA device"),
        (
            lambda a: [t[..., :32].contiguous() for t in a[:4]] + [a[4][:, :32].contiguous(), a[5][..., :32, :32]],
            "N must be 64",
        ),
        (lambda a: [*a[:3], a[3].half(), *a[4:]], "dtype of r"),
        (lambda a: [a[0].transpose(0, 1).contiguous().transpose(0, 1), *a[1:]], "r must be contiguous"),
        (lambda a: [*a[:5], a[5].transpose(-1, -2)], "state must be contiguous"),
        (lambda a: [*a[:4], a[4][:2], a[5]], "u must be"),  # the shared checks come first
    ],
    ids=["cpu", "head-size", "dtype", "r-strides", "state-strides", "shared-check"],
)
def test_launcher_rejects(change, message):
    with pytest.raises(ValueError, match=message):
        wkv6_prefill_cupy(*change(inputs(5)))


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
def no_cupy(monkeypatch):
    """`import cupy` fails, as where the extra is not installed."""
    kernels.cupy_import_error.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", None)
    yield
    kernels.cupy_import_error.cache_clear()


def test_resolve_backend():
    assert resolve_backend("torch", "cuda") == "torch"
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "cupy"  # cupy imports here, no GPU needed
    assert resolve_backend("cupy", "cuda:0") == "cupy"
    with pytest.raises(ValueError, match="needs a CUDA device, got cpu"):
        resolve_backend("cupy", "cpu")
    with pytest.raises(ValueError, match="expected one of auto, cupy, torch"):
        resolve_backend("triton", "cuda")


def test_forcing_cupy_without_cupy_names_the_extra(no_cupy):
    assert resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(ValueError, match=r"needs CuPy.*visualrwkv-eval\[cuda12\].*visualrwkv-eval\[cuda13\]"):
        resolve_backend("cupy", "cuda")


def test_default_split():
    assert default_split(32, 132) == 4  # batch 1 of a 32-head model: 128 blocks
    assert default_split(96, 132) == 2
    assert default_split(16 * 32, 132) == 1
    assert default_split(1, 132) == SPLITS[-1]


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
        cu = torch.tensor([0, *lengths]).cumsum(0)
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
        r, k, v, w, u, state = cuda_inputs(64, dtype=torch.bfloat16, seed=3)
        expected_state = state.clone()
        expected = wkv6_prefill_cupy(r, k, v, w, u, expected_state)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            y = wkv6_prefill(r, k, v, w, u, state, backend=resolve_backend("auto", r.device))
            y = y.clone()  # ordered after the kernel only if the kernel ran on `side`
        side.synchronize()
        assert torch.equal(y, expected) and torch.equal(state, expected_state)
