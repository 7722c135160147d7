"""Image scans: the order in which each language-model layer reads the image's patch positions (VisualRWKV,
arXiv 2406.13362, section 3; github.com/howard-hou/VisualRWKV, VisualRWKV-v6/v6.0/src/model.py).

A scan permutes only the rows the vision tower marks as reorderable (CLIP: the P patches, not CLS); CLS and text
keep their places. The permutation wraps a whole block (ln1, time-mix, ln2, channel-mix) and is undone after it,
so the residual stream between blocks, and any per-row carry a language model hands from layer to layer, is
always in the original order. `run_layers` does this for any language model (model/language_model.py).
"""

from __future__ import annotations

import math

import torch

from .packing import Carry, Packing

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


def run_layers(lm, x: torch.Tensor, state, pack: Packing, orders: list[torch.Tensor | None] | None) -> torch.Tensor:
    """Rows [T, C] through every layer of `lm` -> final hidden rows [T, C]. Layer i reads the rows (and the
    per-row carry) in the order `orders[i]` (None: unchanged), and its output is put back in row order."""
    lm.cpu_layout_()
    carry: Carry = ()
    for i in range(len(lm.blocks)):
        order = None if orders is None else orders[i]
        if order is None:
            x, carry = lm.block(i, x, state, pack, carry)
            continue
        y, carry = lm.block(i, x[order], state, pack, tuple(c[order] for c in carry))
        x = x.index_copy(0, order, y)  # a permutation: every row is written, so x's values do not matter
        carry = tuple(c.index_copy(0, order, c) for c in carry)
    return x
