"""The argument contract every WKV implementation checks (kernels/wkv6/checks.py, kernels/wkv7/checks.py), so that
the PyTorch reference and the CuPy launcher of an op accept and reject the same inputs with the same messages.

Per-token tensors [T, H, N] (prefill) or [B, H, N] (decode), r first, in one float dtype (float32, bfloat16 or
float16), any strides; optionally a per-head tensor [H, N] (WKV6's bonus u) of that dtype; state [B, H, N, N]
float32, any strides; cu_seqlens None or a 1-D int32/int64 tensor [B + 1] of offsets rising from 0 to T, on the CPU
(validated) or on the tensors' device (trusted: reading it back would synchronise the device on every call);
everything else on one device. A decode step checks once per layer, so this is written to cost microseconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_wkv_args(
    op: str,
    names: str,
    rows: Sequence[torch.Tensor],
    state: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    *,
    decode: bool,
    u: torch.Tensor | None = None,
) -> None:
    """Raise ValueError("{op}: ...") unless `rows` (named by the letters of `names`, r first), `u`, `state` and
    `cu_seqlens` keep the contract above."""
    r, rest = rows[0], rows[1:]
    shape = r.shape
    if len(shape) != 3:
        raise ValueError(f"{op}: r must be {'[B, H, N]' if decode else '[T, H, N]'}, got shape {tuple(shape)}")
    if not all(t.shape == shape for t in rest):
        name, t = next((n, t) for n, t in zip(names[1:], rest) if t.shape != shape)
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, r has {tuple(shape)}")
    H, N = shape[1], shape[2]
    others = rest if u is None else (*rest, u)
    if u is not None and u.shape != (H, N):
        raise ValueError(f"{op}: u must be [H, N] = [{H}, {N}], got {tuple(u.shape)}")
    dtype = r.dtype
    if not (dtype in FLOAT_DTYPES and all(t.dtype == dtype for t in others)):
        _dtype_error(op, names if u is None else names + "u", (r, *others))
    if state.dtype != torch.float32:
        raise ValueError(f"{op}: state must be float32, got {state.dtype}")
    batch = shape[0] if decode else (1 if cu_seqlens is None else cu_seqlens.numel() - 1)
    if state.shape != (batch, H, N, N):
        raise ValueError(f"{op}: state must be [B, H, N, N] = [{batch}, {H}, {N}, {N}], got {tuple(state.shape)}")
    device = r.device
    if not (all(t.device == device for t in others) and state.device == device):
        devices = {t.device for t in (r, *others, state)}
        raise ValueError(f"{op}: all tensors must be on one device, got {sorted(map(str, devices))}")
    if cu_seqlens is not None:
        _check_offsets(op, cu_seqlens, shape[0], device)


def _dtype_error(op: str, names: str, tensors: Sequence[torch.Tensor]) -> None:
    for name, t in zip(names, tensors):
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}; expected float32, bfloat16 or float16")
    dtypes = ", ".join(str(t.dtype) for t in tensors)
    raise ValueError(f"{op}: {', '.join(names)} must share one dtype, got {dtypes}")


def _check_offsets(op: str, cu_seqlens: torch.Tensor, T: int, device: torch.device) -> None:
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: cu_seqlens must be a 1-D integer tensor [B + 1] of sequence offsets")
    if cu_seqlens.device.type != "cpu":
        if cu_seqlens.device != device:
            raise ValueError(f"{op}: cu_seqlens must be on the CPU or on {device}, got {cu_seqlens.device}")
        return  # reading the offsets back would synchronise the device on every launch
    c = cu_seqlens.tolist()
    if c[0] != 0 or c[-1] != T or any(b < a for a, b in itertools.pairwise(c)):
        raise ValueError(f"{op}: cu_seqlens must rise from 0 to T = {T}, got {c}")
