"""Row products on CPU: x [M, K] @ w [K, N] where each row's bits never depend on the other rows of the call, for
decode steps whose rows belong to different sequences (model/rowwise.py). A PyTorch reference (reference.py: one
1-row BLAS call per row) and a C kernel built at run time (rowmm.c, cpu.py: the weights read once per call),
sharing one argument contract (checks.py).

`row_kernel()` picks one per process: the C kernel where it builds and passes its probe, else the reference
with a warning; $VISUALRWKV_ROWMM=torch forces the reference, =c requires the C kernel."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable

import torch

from .reference import rowmm_torch

RowKernel = Callable[..., torch.Tensor]
CHOICES = ("auto", "c", "torch")
log = logging.getLogger(__name__)


@functools.cache
def row_kernel() -> RowKernel:
    """The row product this process uses on CPU (decided once; see the module docstring)."""
    choice = os.environ.get("VISUALRWKV_ROWMM", "auto")
    if choice not in CHOICES:
        raise ValueError(f"VISUALRWKV_ROWMM={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "torch":
        return rowmm_torch
    from .cpu import build_error, rowmm_c

    if (error := build_error()) is None:
        log.info("CPU row products: the C kernel (kernels/rowmm/rowmm.c)")
        return rowmm_c
    if choice == "c":
        raise RuntimeError(f"VISUALRWKV_ROWMM=c: the C row kernel is unusable here: {error}")
    warnings.warn(f"the C row kernel is unusable ({error}); CPU decoding uses one BLAS call per row (slower)",
                  RuntimeWarning, stacklevel=2)  # fmt: skip
    return rowmm_torch


__all__ = ["CHOICES", "row_kernel", "rowmm_torch"]
