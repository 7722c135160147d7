"""Argument checks shared by every WKV6 implementation, so that all of them accept and reject the same inputs
(the checks themselves, common to every WKV op, are in kernels/checks.py).

The contract (reference.py and cupy.py alike):
- r, k, v, w: [T, H, N] (prefill) or [B, H, N] (decode); u: [H, N]; all five share one float dtype
  (float32, bfloat16 or float16) and any strides;
- state: [B, H, N, N] float32, any strides, updated in place;
- cu_seqlens: None or a 1-D int32/int64 tensor [B + 1] of offsets rising from 0 to T, any strides, on the CPU
  or on the tensors' device (offsets on the CPU are validated; on a GPU they are trusted, since reading them back
  would synchronise the device on every call);
- everything else on one device.
The CUDA kernel adds one limit of its own: N = 64 (the size of every released RWKV-6 head).

The decode check runs once per layer and step, so it is written to cost a few microseconds.
"""

from __future__ import annotations

import torch

from ..checks import check_wkv_args


def check_wkv6_args(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    *,
    decode: bool,
) -> None:
    check_wkv_args("wkv6", "rkvw", (r, k, v, w), state, cu_seqlens, decode=decode, u=u)
