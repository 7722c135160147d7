"""Matrix products whose result for a row never depends on the other rows of the call.

BLAS picks its blocking by the number of rows, so row i of x @ W.T can differ in the last bits between a
call with 1 row and one with 8 (1e-5 to 1e-4 here), enough to flip a greedy near-tie between batch sizes. On
CPU every product runs in fixed tiles of TILE rows, the last one zero-padded: a row's result is then a
function of that row alone, so batch size and packing never change an answer. On CUDA the products are single
calls (cuBLAS also picks kernels by shape: there the invariance is not bitwise, see the README).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

TILE = 16


def _tiled(fn: Callable[..., torch.Tensor], x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """fn over tiles of TILE rows of x (rows on dim -2), concatenated back."""
    if x.device.type != "cpu":
        return fn(x, *args)
    n = x.shape[-2]
    padded = F.pad(x, (0, 0, 0, -n % TILE))
    out = torch.cat([fn(tile, *args) for tile in padded.split(TILE, dim=-2)], dim=-2)
    return out[..., :n, :]


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [n, K] @ weight[N, K].T -> [n, N]."""
    return _tiled(F.linear, x, weight)


def bmm(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """x [G, n, K] @ other [G, K, N] -> [G, n, N]."""
    return _tiled(torch.bmm, x, other)
