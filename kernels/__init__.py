"""WKV6 kernels behind one dispatcher: `wkv6_prefill` / `wkv6_decode` take the same arguments as the
PyTorch reference (wkv6_torch.py) and return the same results; `backend` picks the implementation."""

from __future__ import annotations

import torch

from .wkv6_torch import wkv6_decode_torch, wkv6_prefill_torch

KERNELS = ("auto", "cupy", "torch")


def resolve_backend(kernel: str, device: torch.device | str) -> str:
    """'torch' or 'cupy' for a `kernel` model_arg on a device."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")
    return "torch"


def wkv6_prefill(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    *,
    backend: str = "torch",
) -> torch.Tensor:
    return wkv6_prefill_torch(r, k, v, w, u, state, cu_seqlens)


def wkv6_decode(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    *,
    backend: str = "torch",
) -> torch.Tensor:
    return wkv6_decode_torch(r, k, v, w, u, state)


__all__ = [
    "KERNELS",
    "resolve_backend",
    "wkv6_decode",
    "wkv6_decode_torch",
    "wkv6_prefill",
    "wkv6_prefill_torch",
]
