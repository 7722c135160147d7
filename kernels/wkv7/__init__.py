"""WKV7, the RWKV-7 "Goose" time-mix recurrence (arXiv 2503.14456): a chunked PyTorch reference (reference.py),
a CUDA kernel (wkv7.cu) and its CuPy launcher (cupy.py), sharing one argument contract (checks.py).
kernels.get("wkv7", backend) picks an implementation; the CuPy launcher is imported only when asked for.

    wkv7_prefill(r, w, k, v, a, b, state, cu_seqlens=None) -> y    packed rows [T, H, N]
    wkv7_decode(r, w, k, v, a, b, state) -> y                      one token per sequence [B, H, N]

per token: S = S diag(exp(-exp(w))) + (S a) b^T + v k^T, y = S r; state [B, H, N, N] fp32 (value, key), in place.
"""

from .reference import wkv7_decode_torch, wkv7_prefill_torch

__all__ = ["wkv7_decode_torch", "wkv7_prefill_torch"]
