"""Argument checks shared by every WKV7 implementation, so that all of them accept and reject the same inputs.

The contract (reference.py and cupy.py alike):
- r, w, k, v, a, b: [T, H, N] (prefill) or [B, H, N] (decode), one float dtype (float32, bfloat16 or float16),
  any strides; w is the raw decay input (decay exp(-exp(w)));
- state: [B, H, N, N] float32 (value index, key index), any strides, updated in place;
- cu_seqlens: None or a 1-D int32/int64 tensor [B + 1] of offsets rising from 0 to T, any strides, on the CPU
  or on the tensors' device (offsets on the CPU are validated; on a GPU they are trusted, since reading them back
  would synchronise the device on every call);
- everything on one device.
The CUDA kernel adds one limit of its own: N = 64 (the head size of every released RWKV-7).

The decode check runs once per layer and step, so it is written to cost a few microseconds.
"""

from __future__ import annotations

import itertools

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
NAMES = "rwkvab"


def check_wkv7_args(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    *,
    decode: bool,
) -> None:
    shape = r.shape
    if len(shape) != 3:
        raise ValueError(f"wkv7: r must be {'[B, H, N]' if decode else '[T, H, N]'}, got shape {tuple(shape)}")
    rest = (w, k, v, a, b)
    if not all(t.shape == shape for t in rest):
        name, t = next((n, t) for n, t in zip(NAMES[1:], rest) if t.shape != shape)
        raise ValueError(f"wkv7: {name} has shape {tuple(t.shape)}, r has {tuple(shape)}")
    dtype = r.dtype
    if not (dtype in FLOAT_DTYPES and all(t.dtype == dtype for t in rest)):
        _dtype_error(r, *rest)
    if state.dtype != torch.float32:
        raise ValueError(f"wkv7: state must be float32, got {state.dtype}")
    H, N = shape[1], shape[2]
    batch = shape[0] if decode else (1 if cu_seqlens is None else cu_seqlens.numel() - 1)
    if state.shape != (batch, H, N, N):
        raise ValueError(f"wkv7: state must be [B, H, N, N] = [{batch}, {H}, {N}, {N}], got {tuple(state.shape)}")
    device = r.device
    if not (all(t.device == device for t in rest) and state.device == device):
        devices = {t.device for t in (r, *rest, state)}
        raise ValueError(f"wkv7: all tensors must be on one device, got {sorted(map(str, devices))}")
    if cu_seqlens is not None:
        _check_offsets(cu_seqlens, shape[0], device)


def _dtype_error(*tensors: torch.Tensor) -> None:
    for name, t in zip(NAMES, tensors):
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"wkv7: {name} has dtype {t.dtype}; expected float32, bfloat16 or float16")
    dtypes = ", ".join(str(t.dtype) for t in tensors)
    raise ValueError(f"wkv7: r, w, k, v, a, b must share one dtype, got {dtypes}")


def _check_offsets(cu_seqlens: torch.Tensor, T: int, device: torch.device) -> None:
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError("wkv7: cu_seqlens must be a 1-D integer tensor [B + 1] of sequence offsets")
    if cu_seqlens.device.type != "cpu":
        if cu_seqlens.device != device:
            raise ValueError(f"wkv7: cu_seqlens must be on the CPU or on {device}, got {cu_seqlens.device}")
        return  # reading the offsets back would synchronise the device on every launch
    c = cu_seqlens.tolist()
    if c[0] != 0 or c[-1] != T or any(y < x for x, y in itertools.pairwise(c)):
        raise ValueError(f"wkv7: cu_seqlens must rise from 0 to T = {T}, got {c}")
