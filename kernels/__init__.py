"""WKV kernels by operation, behind one registry: `get(op, backend)` returns the (prefill, decode) pair of an
operation ("wkv6"; a new one adds its row to OPS and PROBES) for a backend: "torch" (the PyTorch reference, any
device), "cupy" (a CUDA kernel compiled at run time by NVRTC and launched through CuPy) or "c" (a CPU kernel built
at run time by the C compiler, kernels/cpu_common.py). Every implementation of an operation takes the same
arguments and returns the same results as its reference.

`resolve_backend` decides once per (kernel, device, dtype, op): before CuPy is trusted on a device, the operation's
probe compiles its kernel and compares one small launch with the reference, so that a broken NVRTC, driver or GPU
shows at load time, not mid-evaluation. On CPU, 'auto' takes the C kernel where the op has one and it builds and
passes its probe (float32 only), else the reference.
(The row products of CPU decoding are another kind of kernel, with their own choice: kernels/rowmm.)"""

from __future__ import annotations

import functools
import importlib
import logging
import warnings
from collections.abc import Callable

import torch

from .wkv6.reference import wkv6_decode_torch, wkv6_prefill_torch

# op -> backend -> (module under kernels/, prefill function, decode function); imported on first use
OPS: dict[str, dict[str, tuple[str, str, str]]] = {
    "wkv6": {
        "torch": ("wkv6.reference", "wkv6_prefill_torch", "wkv6_decode_torch"),
        "cupy": ("wkv6.cupy", "wkv6_prefill_cupy", "wkv6_decode_cupy"),
        "c": ("wkv6.cpu", "wkv6_prefill_c", "wkv6_decode_c"),
    },
    "wkv7": {
        "torch": ("wkv7.reference", "wkv7_prefill_torch", "wkv7_decode_torch"),
        "cupy": ("wkv7.cupy", "wkv7_prefill_cupy", "wkv7_decode_cupy"),
    },
}
# op -> module whose `probe(device_index, dtype) -> str | None` checks the CuPy kernel on a device
PROBES: dict[str, str] = {"wkv6": "wkv6.cupy", "wkv7": "wkv7.cupy"}

KERNELS = ("auto", "cupy", "torch")
BACKENDS = ("cupy", "c", "torch")
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
def probe_cupy(device: torch.device, dtype: torch.dtype, op: str = "wkv6") -> str | None:
    """Why the CuPy kernel of `op` cannot serve `dtype` on `device`, or None (the op's probe: every entry point
    compiled, one small launch compared with the reference). Once per process, device, dtype and op."""
    if (error := cupy_import_error()) is not None:
        return f"CuPy does not import ({error}): {CUPY_INSTALL}"
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        return importlib.import_module(f"{__name__}.{PROBES[op]}").probe(index, dtype)
    except Exception as e:  # NVRTC, driver, out of memory...: any of them makes the kernel unusable here
        return f"{type(e).__name__}: {e}"


@functools.cache
def _resolve(kernel: str, device: torch.device, dtype: torch.dtype | None, op: str) -> str:
    if kernel == "torch":
        return "torch"
    if device.type != "cuda":
        if kernel == "cupy":
            raise ValueError(f"kernel='cupy' needs a CUDA device, got {device}; use kernel='torch' or 'auto'")
        return _resolve_cpu(dtype, op)
    import_error = cupy_import_error()
    if kernel == "cupy" and import_error is not None:
        raise ValueError(f"kernel='cupy' needs CuPy, which does not import ({import_error}): {CUPY_INSTALL}")
    if import_error is not None:
        reason = f"CuPy does not import ({import_error}): {CUPY_INSTALL}"
    else:
        reason = None if dtype is None else probe_cupy(device, dtype, op)
    if reason is None:
        log.info("WKV backend: cupy on %s (%s, %s)", device, "not probed" if dtype is None else dtype, op)
        return "cupy"
    if kernel == "cupy":
        raise RuntimeError(f"kernel='cupy': the CUDA WKV kernel does not work on {device} ({dtype}): {reason}")
    warnings.warn(f"kernel='auto': the CUDA WKV kernel is not usable on {device} ({reason}); "
                  "using the PyTorch reference (slower)", RuntimeWarning, stacklevel=3)  # fmt: skip
    log.warning("WKV backend: torch on %s (%s); the CUDA kernel is unusable: %s", device, dtype, reason)
    return "torch"


def _resolve_cpu(dtype: torch.dtype | None, op: str) -> str:
    """'auto' on a CPU: the op's C kernel where it has one that serves `dtype`, else the reference."""
    if "c" not in OPS[op] or dtype is None:
        return "torch"
    reason = importlib.import_module(f"{__name__}.{OPS[op]['c'][0]}").probe(dtype)
    if reason is not None:
        if dtype == torch.float32:  # other dtypes have no C kernel by design
            warnings.warn(f"kernel='auto': the C {op} kernel is unusable on this CPU ({reason}); using the PyTorch "
                          "reference (slower)", RuntimeWarning, stacklevel=4)  # fmt: skip
        log.info("WKV backend: torch on cpu (%s, %s): %s", dtype, op, reason)
        return "torch"
    log.info("WKV backend: c on cpu (%s, %s)", dtype, op)
    return "c"


def resolve_backend(kernel: str, device: torch.device | str, dtype: torch.dtype | None = None, op: str = "wkv6") -> str:
    """'torch', 'cupy' or 'c' for a `kernel` model_arg on a device: 'auto' takes CuPy where it works on a GPU, the
    op's C kernel on a CPU.

    With a dtype, CuPy is probed first (`probe_cupy`): 'auto' warns and falls back to torch with the reason,
    'cupy' raises it. Without one, only the import is checked. Decided once per (kernel, device, dtype, op); the
    backend in use is logged at that moment."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")
    if op not in OPS:
        raise ValueError(f"op={op!r}: expected one of {', '.join(OPS)}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return _resolve(kernel, device, dtype, op)


Prefill = Callable[..., torch.Tensor]
Decode = Callable[..., torch.Tensor]


def get(op: str, backend: str) -> tuple[Prefill, Decode]:
    """(prefill, decode) of `op` on `backend`; CuPy is an optional extra, imported only when asked for. Looked
    up at each call (a model looks up once, when its device or dtype changes)."""
    if op not in OPS:
        raise ValueError(f"op={op!r}: expected one of {', '.join(OPS)}")
    if backend not in OPS[op]:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(OPS[op])} (see resolve_backend)")
    module, prefill, decode = OPS[op][backend]
    found = importlib.import_module(f"{__name__}.{module}")
    return getattr(found, prefill), getattr(found, decode)


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
    return get("wkv6", backend)[0](r, k, v, w, u, state, cu_seqlens)


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
    return get("wkv6", backend)[1](r, k, v, w, u, state)


__all__ = [
    "BACKENDS",
    "KERNELS",
    "OPS",
    "cupy_import_error",
    "get",
    "probe_cupy",
    "resolve_backend",
    "wkv6_decode",
    "wkv6_decode_torch",
    "wkv6_prefill",
    "wkv6_prefill_torch",
]
