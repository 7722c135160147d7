"""Argument checks shared by every WKV6 implementation, so that all of them reject the same inputs."""

from __future__ import annotations

import itertools

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_wkv6_args(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    *,
    decode: bool,
) -> None:
    layout = "[B, H, N]" if decode else "[T, H, N]"
    if r.ndim != 3:
        raise ValueError(f"wkv6: r must be {layout}, got shape {tuple(r.shape)}")
    H, N = r.shape[1:]
    for name, t in (("k", k), ("v", v), ("w", w)):
        if t.shape != r.shape:
            raise ValueError(f"wkv6: {name} has shape {tuple(t.shape)}, r has {tuple(r.shape)}")
    if u.shape != (H, N):
        raise ValueError(f"wkv6: u must be [H, N] = [{H}, {N}], got {tuple(u.shape)}")
    for name, t in (("r", r), ("k", k), ("v", v), ("w", w), ("u", u)):
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"wkv6: {name} has dtype {t.dtype}; expected float32, bfloat16 or float16")
    if len({r.dtype, k.dtype, v.dtype}) != 1:
        raise ValueError(f"wkv6: r, k, v must share a dtype, got {r.dtype}, {k.dtype}, {v.dtype}")
    if state.dtype != torch.float32:
        raise ValueError(f"wkv6: state must be float32, got {state.dtype}")
    batch = r.shape[0] if decode else (1 if cu_seqlens is None else cu_seqlens.numel() - 1)
    if state.shape != (batch, H, N, N):
        raise ValueError(f"wkv6: state must be [B, H, N, N] = [{batch}, {H}, {N}, {N}], got {tuple(state.shape)}")
    devices = {t.device for t in (r, k, v, w, u, state)}
    if len(devices) != 1:
        raise ValueError(f"wkv6: all tensors must be on one device, got {sorted(map(str, devices))}")
    if cu_seqlens is not None:
        if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError("wkv6: cu_seqlens must be a 1-D integer tensor [B + 1] of sequence offsets")
        if cu_seqlens.device.type != "cpu":
            return  # reading the offsets back would synchronise the device on every launch
        c = cu_seqlens.tolist()
        if c[0] != 0 or c[-1] != r.shape[0] or any(b < a for a, b in itertools.pairwise(c)):
            raise ValueError(f"wkv6: cu_seqlens must rise from 0 to T = {r.shape[0]}, got {c}")
