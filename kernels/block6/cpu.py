"""The launcher of block6_decode.c: one RWKV-6 block of a decode step on the CPU in one call (float32). Its
reference is the PyTorch path of model/rwkv6.py (TimeMix and ChannelMix with one row per sequence), which
tests/test_cpu_kernels.py compares it with; model/rwkv6.py gathers the block's weights (`WEIGHTS` order) and
calls `block6_decode_c` when the WKV backend is "c"."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from ..cpu_common import error_of, function

SOURCE = Path(__file__).with_name("block6_decode.c")
# the order of `enum W` in block6_decode.c
WEIGHTS = (
    "ln1.weight ln1.bias att.time_maa_x att.time_maa_w att.time_maa_k att.time_maa_v att.time_maa_r "
    "att.time_maa_g att.time_maa_w1 att.time_maa_w2 att.time_decay att.time_decay_w1 att.time_decay_w2 "
    "att.time_faaaa att.receptance.weight att.key.weight att.value.weight att.gate.weight att.output.weight "
    "att.ln_x.weight att.ln_x.bias ln2.weight ln2.bias ffn.time_maa_k ffn.time_maa_r ffn.key.weight "
    "ffn.receptance.weight ffn.value.weight"
).split()
ARGTYPES = (ctypes.c_void_p,) * 6 + (ctypes.c_long,) * 8 + (ctypes.c_float,) * 2 + (ctypes.c_int,)


@functools.cache
def _kernel():
    return function(SOURCE, "block6_decode", ARGTYPES)


@functools.cache
def build_error() -> str | None:
    """Why the block kernel cannot be built here, or None."""
    return error_of(lambda: _kernel() and None)


def scratch_floats(C: int, A: int, F: int, D: int, Dd: int) -> int:
    """Scratch per row: h, xx, xxx, the five lerps, the LoRA hiddens, r, k, v, g, w, y, the FFN key, receptance
    and output."""
    return 10 * C + 5 * D + Dd + 6 * A + F


def block6_decode_c(
    x: torch.Tensor,
    att_shift: torch.Tensor,
    wkv: torch.Tensor,
    ffn_shift: torch.Tensor,
    weights: list[torch.Tensor],
    dims: tuple[int, int, int, int, int, int, int],
    ln_eps: float,
    gn_eps: float,
) -> None:
    """x [B, C] through one block, in place; att_shift, ffn_shift [B, C] and wkv [B, H, N, N] (this layer's state,
    contiguous float32) updated in place. `weights`: the block's tensors in WEIGHTS order, the four square
    products' and the FFN's as stored by the CPU layout (each [N, K] weight the transpose of a row-major [K, N]);
    dims: C, A, F, H, N, D (ddlerp rank), Dd (decay rank)."""
    C, A, F, H, N, D, Dd = dims
    B = x.shape[0]
    scratch = torch.empty(B * scratch_floats(C, A, F, D, Dd))
    table = (ctypes.c_void_p * len(WEIGHTS))(*(w.data_ptr() for w in weights))
    _kernel()(x.data_ptr(), att_shift.data_ptr(), wkv.data_ptr(), ffn_shift.data_ptr(), table, scratch.data_ptr(),
              B, C, A, F, H, N, D, Dd, ln_eps, gn_eps, torch.get_num_threads())  # fmt: skip


def usable(tensors: list[torch.Tensor]) -> bool:
    """Every tensor float32 on the CPU in the layout the kernel indexes (dense, or for the products the
    transpose of a dense row-major matrix)."""
    return all(t.dtype is torch.float32 and t.is_cpu and (t.is_contiguous() or t.t().is_contiguous()) for t in tensors)
