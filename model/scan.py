"""Image scans: the order in which each RWKV layer reads the P patch positions (spec 2).

A scan permutes only the patches of the image segment; CLS and text keep their places. The permutation
wraps a whole block (ln1, time-mix, ln2, channel-mix) and is undone after it, so the residual stream between
blocks is always in the original order.
"""

from __future__ import annotations

import math

import torch

SCANS = ("bidirectional", "unidirectional", "multidirectional")


def patch_order(scan: str, layer: int, num_patches: int) -> torch.Tensor | None:
    """Patch index read at each step of `layer` (None: row-major, unchanged)."""
    if scan == "unidirectional":
        return None
    if scan == "bidirectional":  # v6.0, the released checkpoints: odd layers read the patches reversed
        return torch.arange(num_patches - 1, -1, -1) if layer % 2 == 1 else None
    if scan == "multidirectional":  # v5.1: row-major, reversed, column-major, column-major reversed
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches:
            raise ValueError(f"the multidirectional scan needs a square patch grid, got {num_patches} patches")
        order = torch.arange(num_patches)
        if layer % 4 >= 2:
            order = order.view(grid, grid).t().reshape(-1)
        if layer % 2 == 1:
            order = order.flip(0)
        return None if layer % 4 == 0 else order
    raise ValueError(f"scan={scan!r}: expected one of {', '.join(SCANS)}")


def layer_orders(
    scan: str,
    n_layer: int,
    total: int,
    patch_starts: list[int],
    num_patches: int,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor | None]:
    """For each layer, the row gather index over a packed batch of `total` rows (None: identity), on `device`.

    `patch_starts` holds the packed row of the first patch of every image segment. Every scan repeats with
    period 4 in the layer, so at most four indices are built and the layers share them.
    """
    if not patch_starts:
        return [None] * n_layer
    built: dict[int, torch.Tensor | None] = {}
    for phase in range(min(4, n_layer)):
        order = patch_order(scan, phase, num_patches)
        if order is None:
            built[phase] = None
            continue
        rows = torch.arange(total)
        for start in patch_starts:
            rows[start : start + num_patches] = order + start
        built[phase] = rows.to(device)
    return [built[layer % 4] for layer in range(n_layer)]
