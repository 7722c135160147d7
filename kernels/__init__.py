"""WKV6 kernels behind one dispatcher: `wkv6_prefill` / `wkv6_decode` take the same arguments as the
PyTorch reference (wkv6_torch.py) and return the same results; `backend` picks the implementation:
"torch" (any device) or "cupy" (the CUDA kernels of wkv6.cu, launched by wkv6_cupy.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .wkv6_torch import wkv6_decode_torch, wkv6_prefill_torch

KERNELS = ("auto", "cupy", "torch")
BACKENDS = ("cupy", "torch")
CUPY_INSTALL = "pip install 'visualrwkv-eval[cuda12]' or 'visualrwkv-eval[cuda13]' (your CUDA major version)"


@functools.cache
def cupy_import_error() -> str | None:
    """Why `import cupy` fails, or None; tried once per process, since the model asks on every forward."""
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        return str(e) or type(e).__name__
    return None


def resolve_backend(kernel: str, device: torch.device | str) -> str:
    """'torch' or 'cupy' for a `kernel` model_arg on a device: 'auto' takes CuPy where it can run."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")
    if kernel == "torch":
        return "torch"
    on_cuda = torch.device(device).type == "cuda"
    if kernel == "auto":
        return "cupy" if on_cuda and cupy_import_error() is None else "torch"
    if not on_cuda:
        raise ValueError(f"kernel='cupy' needs a CUDA device, got {device}; use kernel='torch' or 'auto'")
    if (error := cupy_import_error()) is not None:
        raise ValueError(f"kernel='cupy' needs CuPy, which does not import ({error}): {CUPY_INSTALL}")
    return "cupy"


def _implementation(backend: str) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """(prefill, decode) of a backend; CuPy is an optional extra, imported only when asked for."""
    if backend == "torch":
        return wkv6_prefill_torch, wkv6_decode_torch
    if backend == "cupy":
        from .wkv6_cupy import wkv6_decode_cupy, wkv6_prefill_cupy

        return wkv6_prefill_cupy, wkv6_decode_cupy
    raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)} (see resolve_backend)")


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
    return _implementation(backend)[0](r, k, v, w, u, state, cu_seqlens)


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
    return _implementation(backend)[1](r, k, v, w, u, state)


__all__ = [
    "BACKENDS",
    "KERNELS",
    "cupy_import_error",
    "resolve_backend",
    "wkv6_decode",
    "wkv6_decode_torch",
    "wkv6_prefill",
    "wkv6_prefill_torch",
]
