"""The C row product (rowmm.c), built at run time for the host CPU and called through ctypes (kernels/cpu_common.py).
`build_error()` says why it cannot be used here (no compiler, a failed build, a probe mismatch); kernels.rowmm's
`row_kernel` then falls back to the PyTorch reference.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from ..cpu_common import error_of, function
from .checks import check_rowmm_args

SOURCE = Path(__file__).with_name("rowmm.c")
ARGTYPES = (ctypes.c_void_p,) * 3 + (ctypes.c_long,) * 10 + (ctypes.c_int,)
_F32 = torch.float32


def supports(x: torch.Tensor, w: torch.Tensor) -> bool:
    """The C kernel takes fp32 CPU tensors with unit column stride (any other strides)."""
    return x.dtype is _F32 and w.dtype is _F32 and x.is_cpu and w.is_cpu and x.stride(-1) == 1 and w.stride(-1) == 1


def rowmm_c(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ w [K, N] -> [M, N] (or G such products: [G, M, K] @ [G, K, N]), each row's bits independent of
    the other rows (written into `out` when given); fp32 CPU tensors whose last dimension is contiguous."""
    # Written for a decode step's ~10 us budget: plain int comparisons, one shape read per tensor.
    xs, ws, d = x.shape, w.shape, x.dim()
    G = xs[0] if d == 3 else 1
    if out is None and d == w.dim() and d in (2, 3):
        out = x.new_empty(*xs[:-1], ws[-1])
    ok = d == w.dim() and d in (2, 3) and (d == 2 or G == ws[0]) and xs[-1] == ws[-2] and out is not None
    if not (ok and supports(x, w) and out.shape == (*xs[:-1], ws[-1]) and out.stride(-1) == 1):
        check_rowmm_args(x, w, out)  # names the shape or dtype at fault
        raise ValueError("rowmm (c): needs fp32 CPU tensors with contiguous rows; use rowmm_torch")
    M, K, N = xs[-2], xs[-1], ws[-1]
    if d == 3:
        gx, gw, go = x.stride(0), w.stride(0), out.stride(0)
    else:
        gx = gw = go = 0
    _kernel()(x.data_ptr(), w.data_ptr(), out.data_ptr(), G, M, K, N, gx, x.stride(-2), gw, w.stride(-2), go,
              out.stride(-2), torch.get_num_threads())  # fmt: skip
    return out


@functools.cache
def _kernel():
    return function(SOURCE, "rowmm_f32", ARGTYPES)


@functools.cache
def build_error() -> str | None:
    """Why the C kernel cannot serve here, or None: built (or found in the cache), then compared on one small
    product with float64. Once per process."""
    return error_of(_probe)


def _probe() -> str | None:
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 67, generator=gen), torch.randn(67, 45, generator=gen)
    got, want = rowmm_c(x, w).double(), x.double() @ w.double()
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
        return f"probe mismatch: max abs difference {(got - want).abs().max().item():.3g}"
    return None
