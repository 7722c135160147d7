"""WKV6 kernels behind one dispatcher: `wkv6_prefill` / `wkv6_decode` take the same arguments as the
PyTorch reference (wkv6_torch.py) and return the same results; `backend` picks the implementation:
"torch" (any device) or "cupy" (the CUDA kernels of wkv6.cu, launched by wkv6_cupy.py).

`resolve_backend` decides once per (kernel, device, dtype): before CuPy is trusted on a device, a probe compiles
the kernel and compares one small launch with the reference, so that a broken NVRTC, driver or GPU shows at
load time, not mid-evaluation."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable

import torch

from .wkv6_torch import wkv6_decode_torch, wkv6_prefill_torch

KERNELS = ("auto", "cupy", "torch")
BACKENDS = ("cupy", "torch")
CUPY_INSTALL = "pip install 'visualrwkv-eval[cuda12]' or 'visualrwkv-eval[cuda13]' (your CUDA major version)"
log = logging.getLogger(__name__)


@functools.cache
def cupy_import_error() -> str | None:
    """Why `import cupy` fails, or None; tried once per process, since the model asks on every forward."""
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        return str(e) or type(e).__name__
    return None


@functools.cache
def probe_cupy(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the CuPy kernel cannot serve `dtype` on `device`, or None: compiles every entry point, runs one small
    packed prefill and compares it with the reference on the CPU. Once per process, device and dtype."""
    if (error := cupy_import_error()) is not None:
        return f"CuPy does not import ({error}): {CUPY_INSTALL}"
    try:
        from . import wkv6_cupy

        index = device.index if device.index is not None else torch.cuda.current_device()
        for split in wkv6_cupy.SPLITS:
            wkv6_cupy._kernel(index, dtype, split)
        return _probe_launch(torch.device("cuda", index), dtype)
    except Exception as e:  # NVRTC, driver, out of memory...: any of them makes the kernel unusable here
        return f"{type(e).__name__}: {e}"


def _probe_launch(device: torch.device, dtype: torch.dtype) -> str | None:
    from .wkv6_cupy import wkv6_prefill_cupy

    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(9, 2, 64, generator=g) for _ in range(3))
    w = torch.rand(9, 2, 64, generator=g) * 7.5 - 6
    u = torch.randn(2, 64, generator=g)
    state = torch.randn(2, 2, 64, 64, generator=g)
    cu = torch.tensor([0, 4, 9])
    cpu = [t.to(dtype) for t in (r, k, v, w, u)]
    y_ref = wkv6_prefill_torch(*cpu, state_ref := state.clone(), cu).float()
    gpu = [t.to(device) for t in cpu]
    y = wkv6_prefill_cupy(*gpu, state_gpu := state.to(device), cu).float().cpu()
    torch.cuda.synchronize(device)
    err = max(((y - y_ref).abs().max() / y_ref.abs().max()).item(),
              ((state_gpu.cpu() - state_ref).abs().max() / state_ref.abs().max()).item())  # fmt: skip
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    if not err <= tolerance:  # NaN fails too
        return f"the probe launch differs from the PyTorch reference (max relative error {err:.3g} > {tolerance})"
    return None


@functools.cache
def _resolve(kernel: str, device: torch.device, dtype: torch.dtype | None) -> str:
    if kernel == "torch":
        return "torch"
    if device.type != "cuda":
        if kernel == "cupy":
            raise ValueError(f"kernel='cupy' needs a CUDA device, got {device}; use kernel='torch' or 'auto'")
        return "torch"
    import_error = cupy_import_error()
    if kernel == "cupy" and import_error is not None:
        raise ValueError(f"kernel='cupy' needs CuPy, which does not import ({import_error}): {CUPY_INSTALL}")
    if import_error is not None:
        reason = f"CuPy does not import ({import_error}): {CUPY_INSTALL}"
    else:
        reason = None if dtype is None else probe_cupy(device, dtype)
    if reason is None:
        log.info("WKV backend: cupy on %s (%s)", device, "not probed" if dtype is None else dtype)
        return "cupy"
    if kernel == "cupy":
        raise RuntimeError(f"kernel='cupy': the CUDA WKV kernel does not work on {device} ({dtype}): {reason}")
    warnings.warn(f"kernel='auto': the CUDA WKV kernel is not usable on {device} ({reason}); "
                  "using the PyTorch reference (slower)", RuntimeWarning, stacklevel=3)  # fmt: skip
    log.warning("WKV backend: torch on %s (%s); the CUDA kernel is unusable: %s", device, dtype, reason)
    return "torch"


def resolve_backend(kernel: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """'torch' or 'cupy' for a `kernel` model_arg on a device: 'auto' takes CuPy where it works.

    With a dtype, CuPy is probed first (`probe_cupy`): 'auto' warns and falls back to torch with the reason,
    'cupy' raises it. Without one, only the import is checked. Decided once per (kernel, device, dtype); the
    backend in use is logged at that moment."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return _resolve(kernel, device, dtype)


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
    "probe_cupy",
    "resolve_backend",
    "wkv6_decode",
    "wkv6_decode_torch",
    "wkv6_prefill",
    "wkv6_prefill_torch",
]
