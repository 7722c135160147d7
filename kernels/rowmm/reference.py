"""The PyTorch reference of the row product: every row of x [M, K] @ w [K, N] in a 1-row torch.mm call of its own,
so that a row's bits never depend on the other rows (at the price of reading w once per row)."""

from __future__ import annotations

import torch

from .checks import check_rowmm_args


def rowmm_torch(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ w [K, N] -> [M, N] (or G such products: [G, M, K] @ [G, K, N]), each row alone (written into
    `out` when given)."""
    check_rowmm_args(x, w, out)
    if out is None:
        out = x.new_empty(*x.shape[:-1], w.shape[-1])
    if x.dim() == 3:
        for xg, wg, og in zip(x, w, out):
            rowmm_torch(xg, wg, og)
        return out
    for i in range(x.shape[0]):
        torch.mm(x[i : i + 1], w, out=out[i : i + 1])
    return out
