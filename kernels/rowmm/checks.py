"""The argument contract every row-product implementation shares."""

from __future__ import annotations

import torch


def check_rowmm_args(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None) -> None:
    """x [M, K] and w [K, N], or G products x [G, M, K] and w [G, K, N]; one dtype; out of the result's shape."""
    two_d = x.dim() == 2 and w.dim() == 2
    three_d = x.dim() == 3 and w.dim() == 3 and x.shape[0] == w.shape[0]
    if not (two_d or three_d) or x.shape[-1] != w.shape[-2]:
        raise ValueError(
            f"rowmm: expected x [M, K] and w [K, N] (or [G, M, K] and [G, K, N]), got {tuple(x.shape)} and "
            f"{tuple(w.shape)}"
        )
    if x.dtype != w.dtype:
        raise ValueError(f"rowmm: x is {x.dtype} but w is {w.dtype}")
    shape = (*x.shape[:-1], w.shape[-1])
    if out is not None and (tuple(out.shape) != shape or out.dtype != x.dtype):
        raise ValueError(f"rowmm: out must be {list(shape)} {x.dtype}, got {tuple(out.shape)} {out.dtype}")
