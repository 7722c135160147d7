"""WKV6 on the CPU in C (wkv6_cpu.c, built at run time: kernels/cpu_common.py), with the same signatures and the
same argument contract as the PyTorch reference (reference.py, checks.py), for float32 tensors with N <= 256.

The reference's chunked matrix form is made for wide devices; on a CPU core the token-by-token recurrence of the
official engines is several times faster (1B6 shape, 640 tokens: 1.2 s of a 8.5 s prefill for the reference). Each
(sequence, head) runs on one thread with its own state, so the batch never changes a sequence's bits.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from ..cpu_common import error_of, function
from .checks import check_wkv6_args
from .reference import wkv6_prefill_torch

SOURCE = Path(__file__).with_name("wkv6_cpu.c")
ARGTYPES = (ctypes.c_void_p,) * 8 + (ctypes.c_long,) * 3 + (ctypes.c_int,)
MAX_HEAD_SIZE = 256


@functools.cache
def _kernel():
    return function(SOURCE, "wkv6_f32", ARGTYPES)


def _run(r, k, v, w, u, state, cu_seqlens: torch.Tensor) -> torch.Tensor:
    if r.dtype != torch.float32 or r.device.type != "cpu" or r.shape[-1] > MAX_HEAD_SIZE:
        raise ValueError(f"wkv6 (c): needs float32 CPU tensors with N <= {MAX_HEAD_SIZE}, got {r.dtype} on "
                         f"{r.device}, N = {r.shape[-1]}; use kernel='torch'")  # fmt: skip
    r, k, v = (t.contiguous() for t in (r, k, v))
    decay = torch.exp(-torch.exp(w.float()))
    u = u.float().contiguous()
    S = state if state.is_contiguous() else state.contiguous()
    cu = cu_seqlens.to(torch.long).contiguous()
    y = torch.empty_like(r)
    B, H, N = S.shape[0], r.shape[1], r.shape[2]
    pointers = (t.data_ptr() for t in (r, k, v, decay, u, S, y, cu))
    _kernel()(*pointers, B, H, N, torch.get_num_threads())
    if S is not state:
        state.copy_(S)
    return y


def wkv6_prefill_c(r, k, v, w, u, state, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Packed sequences: r, k, v, w [T_total, H, N]; state [B, H, N, N] fp32 (initial in, final out)."""
    check_wkv6_args(r, k, v, w, u, state, cu_seqlens, decode=False)
    cu = torch.tensor([0, r.shape[0]]) if cu_seqlens is None else cu_seqlens.cpu()
    return _run(r, k, v, w, u, state, cu)


def wkv6_decode_c(r, k, v, w, u, state) -> torch.Tensor:
    """One step for B sequences: r, k, v, w [B, H, N]; u [H, N]; state [B, H, N, N] fp32."""
    check_wkv6_args(r, k, v, w, u, state, None, decode=True)
    return _run(r, k, v, w, u, state, _steps(r.shape[0]))


@functools.lru_cache(maxsize=64)
def _steps(batch: int) -> torch.Tensor:
    return torch.arange(batch + 1)


def probe(dtype: torch.dtype) -> str | None:
    """Why the C kernel cannot serve `dtype` here, or None: built, then one small packed prefill compared with the
    reference."""
    if dtype != torch.float32:
        return f"the C WKV6 kernel takes float32 only, not {dtype}"
    return _probe_error()


@functools.cache
def _probe_error() -> str | None:
    return error_of(_probe)


def _probe() -> str | None:
    gen = torch.Generator().manual_seed(0)
    T, H, N = 37, 2, 64
    r, k, v = (torch.randn(T, H, N, generator=gen) for _ in range(3))
    w, u = torch.randn(T, H, N, generator=gen) - 0.5, torch.randn(H, N, generator=gen)
    cu = torch.tensor([0, 5, 6, 37])
    s0 = torch.randn(3, H, N, N, generator=gen)
    s_ref, s_c = s0.clone(), s0.clone()
    want, got = wkv6_prefill_torch(r, k, v, w, u, s_ref, cu), wkv6_prefill_c(r, k, v, w, u, s_c, cu)
    error = max((got - want).abs().max().item(), (s_c - s_ref).abs().max().item())
    return None if error < 1e-3 else f"probe mismatch: max abs difference {error:.3g}"
