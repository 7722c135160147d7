"""What several test files share: named token ids, random WKV6 inputs, the float64 WKV6 recurrence, the
relative error the WKV tests measure with, and the CuPy launchers' test tools (NVRTC to PTX, recorded launches,
a busy default stream). A plain module that imports only torch at the top (pytest puts tests/ on sys.path; CuPy
and pytest inside the tools that need them), so that tests/test_kernels.py still runs on a GPU machine without the
evaluation stack. The stop token is the package's own (visualrwkv_eval.model.tokenizer.STOP_TOKEN, 261, "\n\n"):
import it from there."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

# RWKV World vocabulary (rwkv_vocab_v20230424, read from the `rwkv` package)
VOCAB_SIZE = 65536
NEWLINE = 11  # "\n" (tests/test_tokenizer.py checks it against the vocabulary)
# the reference's IMAGE_TOKEN_INDEX (VisualRWKV-v6/v6.0/src/dataset.py, LLaVA's convention): the id that stands
# for the image in a tokenized prompt before the image rows are spliced in
IMAGE_TOKEN_INDEX = -200

# why the kernel tests skip: the `test` extra leaves CuPy out (setup.cfg), CI installs it
CUPY_MISSING = "CuPy is not installed: pip install -e '.[test,cuda13]' (or cuda12) to compile-check the kernels"

HEAD_SIZE = 64  # N: RWKV-6's head size (arXiv 2404.05892), the one the CUDA kernel is compiled for


def wkv6_inputs(
    T: int,
    H: int = 2,
    B: int = 1,
    *,
    N: int = HEAD_SIZE,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    decay: str = "realistic",
) -> list[torch.Tensor]:
    """[r, k, v, w, u, state]: r, k, v, w [T, H, N] and u [H, N] in `dtype`, an fp32 state [B, H, N, N].

    realistic: w in [-6, 1.5], decays exp(-exp(w)) from 0.9975 down to 0.011; extreme: decays within 1e-9 of 1 and
    about 1e-24 of 0 (w near -20 or 4), mixed over time. Unit-variance r, k, v, u and state."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(T, H, N, generator=g) for _ in range(3))
    if decay == "realistic":
        w = torch.rand(T, H, N, generator=g) * 7.5 - 6
    elif decay == "extreme":
        w = torch.where(torch.rand(T, H, N, generator=g) < 0.5, -20.0, 4.0) + torch.randn(T, H, N, generator=g)
    else:
        raise ValueError(f"decay={decay!r}: realistic or extreme")
    u = torch.randn(H, N, generator=g)
    state = torch.randn(B, H, N, N, generator=g)
    return [t.to(device, dtype) for t in (r, k, v, w, u)] + [state.to(device)]


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    """Offsets [B + 1] of packed sequences of these lengths (on the CPU, as the model passes them)."""
    return torch.tensor([0, *lengths]).cumsum(0)


def naive_wkv6(r, k, v, w, u, S):
    """The WKV6 recurrence (arXiv 2404.05892, Finch time mixing), one token at a time, in float64:
    y_t = r_t (S + diag(u) k_t^T v_t), S <- diag(exp(-exp(w_t))) S + k_t^T v_t, for one state S [H, N, N]."""
    r, k, v, w, u, S = (t.double() for t in (r, k, v, w, u, S.clone()))
    ys = []
    for t in range(r.shape[0]):
        kv = k[t].unsqueeze(-1) * v[t].unsqueeze(-2)
        ys.append(torch.einsum("hi,hij->hj", r[t], S + u.unsqueeze(-1) * kv))
        S = torch.exp(-torch.exp(w[t])).unsqueeze(-1) * S + kv
    return torch.stack(ys), S


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64 on the CPU."""
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max()).item()


MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10}


def ulps(y: torch.Tensor, ref: torch.Tensor, fp32_slack: float) -> float:
    """Largest distance of y from the float64 reference in units in the last place of y's dtype (bf16 / fp16) at
    the reference, after taking off what fp32 arithmetic may add (fp32_slack of the largest |y|, which matters where
    y is small)."""
    exponent = torch.floor(torch.log2(ref.abs().clamp_min(1e-30)))
    ulp = torch.exp2(exponent - MANTISSA_BITS[y.dtype])
    excess = ((y.double() - ref).abs() - fp32_slack * ref.abs().max()).clamp_min(0)
    return (excess / ulp).max().item()


# --- the CuPy launchers' tests (tests/test_kernels.py, tests/test_wkv7_kernels.py) -------------------------------


def nvrtc_ptx(source: str, name: str, options: tuple[str, ...]) -> str:
    """PTX from NVRTC without a device; a compile error fails the test with NVRTC's log."""
    import pytest
    from cupy.cuda import nvrtc

    prog = nvrtc.createProgram(source, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError as e:
            pytest.fail(f"NVRTC {options}: {e}\n{nvrtc.getProgramLog(prog)}")
        return nvrtc.getPTX(prog).decode(errors="replace")
    finally:
        nvrtc.destroyProgram(prog)


class FakeStream:
    """Stands in for torch's current stream where there is no GPU: only its handle."""

    def __init__(self, handle: int):
        self.cuda_stream = handle


def record_launches(monkeypatch, launcher) -> tuple[list, list[FakeStream]]:
    """Without a GPU: `launcher`'s (a CuPy launcher module's) kernel becomes a recorder of (launch arguments, CuPy
    stream) and entering a device does nothing. Returns (launches, current): torch's current stream is current[0],
    a FakeStream the test may replace."""
    from visualrwkv_eval.kernels import cupy_common

    launches: list = []
    current = [FakeStream(0xA000)]
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])
    monkeypatch.setattr(launcher, "_kernel", lambda *key: lambda *a, stream: launches.append((a, stream)))
    monkeypatch.setattr(launcher.cupy.cuda, "Device", lambda device: contextlib.nullcontext())
    cupy_common._cupy_stream.cache_clear()
    return launches, current


def side_stream_behind_busy_default(launch: Callable[[], tuple[torch.Tensor, torch.Tensor]]):
    """`launch()` -> (y, state), run on a side stream while the default stream is busy for ~0.5 s; returns copies
    taken on the side stream. A kernel queued on the default (or legacy null) stream instead would leave them
    unwritten when read."""
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    torch.cuda._sleep(1_000_000_000)  # on the default stream
    busy = torch.cuda.Event()
    busy.record()
    with torch.cuda.stream(side):
        y, state = launch()
        y, state = y.clone(), state.clone()
    side.synchronize()
    assert not busy.query(), "the default stream finished early: the test could not tell the streams apart"
    torch.cuda.synchronize()
    return y, state
