"""Packed sequences: B sequences one after another in rows [T_total, C] (`Packing`), as every language model here
runs them; each sequence keeps its own recurrent state, so packing never changes a sequence's result. A decode
step is the same layout with one row per sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch

Carry = tuple[torch.Tensor, ...]  # per-row tensors [T, ...] handed from one layer to the next (model/scan.py)


@dataclass
class Packing:
    """Where each of B sequences lies in the packed rows."""

    cu_seqlens: torch.Tensor | None  # [B + 1] int64 offsets (CPU); None for a decode step
    firsts: torch.Tensor | None  # [B] first row of each sequence (model device)
    lasts: torch.Tensor | None  # [B] last row of each sequence (model device)
    lengths: list[int] | None = None  # [B] rows of each sequence; None for a decode step

    @property
    def decode(self) -> bool:
        """A decode step: every sequence is one row long."""
        return self.cu_seqlens is None

    @staticmethod
    def from_lengths(lengths: list[int], device: torch.device) -> Packing:
        if not lengths or min(lengths) < 1:
            raise ValueError(f"every packed sequence needs at least one row, got lengths {lengths}")
        cu = torch.tensor([0, *lengths]).cumsum(0)
        return Packing(cu, cu[:-1].to(device), (cu[1:] - 1).to(device), list(lengths))

    @staticmethod
    def for_decode() -> Packing:
        return Packing(None, None, None)

    def last_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.decode else x[self.lasts]


def token_shift(x: torch.Tensor, shift: torch.Tensor, pack: Packing) -> torch.Tensor:
    """The previous row of every row; a sequence's first row gets the carried state."""
    if pack.decode:
        return shift
    prev = torch.empty_like(x)
    prev[1:] = x[:-1]
    prev[pack.firsts] = shift
    return prev
