"""WKV6 CUDA kernels (wkv6.cu) launched through CuPy, with the same signatures as the PyTorch reference.

The source is compiled at run time by NVRTC (cupy.RawModule), once per storage dtype and device; there is no
build step at install time. Tensors stay torch tensors: the kernels take raw pointers, torch allocates the
outputs, and every launch goes on torch's current stream. CuPy has no bf16 dtype, which is why nothing is
converted to CuPy arrays.
"""

from __future__ import annotations

import functools
from importlib.resources import files

import cupy
import torch

from .checks import check_wkv6_args

HEAD_SIZE = 64
THREADS = HEAD_SIZE  # per block, whatever the split
SPLITS = (1, 2, 4)  # blocks per head: the entry points wkv6_split1, wkv6_split2, wkv6_split4
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@functools.cache
def kernel_source() -> str:
    return files(__package__).joinpath("wkv6.cu").read_text()


def compile_options(dtype: torch.dtype) -> tuple[str, ...]:
    """NVRTC options for one storage dtype, without the target architecture (CuPy adds the device's).

    CuPy always adds -ftz=true; it is spelled out so that a compile check with these options builds exactly
    what runs.
    """
    return (f"-DWKV_DTYPE_{_DTYPE_NAMES[dtype]}", "-ftz=true")


@functools.cache
def _module(dtype: torch.dtype) -> cupy.RawModule:
    return cupy.RawModule(code=kernel_source(), options=compile_options(dtype))


@functools.cache
def _kernel(device: int, dtype: torch.dtype, split: int) -> cupy.cuda.Function:
    """The compiled entry point, loaded on `device` (compiled on first use, then cached by CuPy on disk)."""
    with cupy.cuda.Device(device):
        return _module(dtype).get_function(f"wkv6_split{split}").kernel


@functools.cache
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_split(heads: int, sm_count: int) -> int:
    """Fewest blocks per head that give every SM a block: a larger split only adds total work.

    `heads` is B * H. Every split computes bit-identical results, so this choice never changes an answer.
    """
    return next((s for s in SPLITS if heads * s >= sm_count), SPLITS[-1])


def _check_launchable(r, k, v, w, u, state, cu_seqlens) -> None:
    """What the kernels need beyond the shared checks; the device comes last so CPU tests reach the rest."""
    if r.shape[-1] != HEAD_SIZE:
        raise ValueError(f"wkv6 (cupy): head size N must be {HEAD_SIZE}, got {r.shape[-1]}; use kernel='torch'")
    if w.dtype != r.dtype or u.dtype != r.dtype:
        raise ValueError(f"wkv6 (cupy): w and u must have the dtype of r ({r.dtype}), got {w.dtype} and {u.dtype}")
    for name, t in (("r", r), ("k", k), ("v", v), ("w", w), ("u", u), ("state", state)):
        if not t.is_contiguous():
            raise ValueError(f"wkv6 (cupy): {name} must be contiguous")
    if r.device.type != "cuda":
        raise ValueError(f"wkv6 (cupy): tensors must be on a CUDA device, got {r.device}; use kernel='torch'")
    if cu_seqlens is not None and cu_seqlens.device not in (torch.device("cpu"), r.device):
        raise ValueError(f"wkv6 (cupy): cu_seqlens must be on the CPU or on {r.device}, got {cu_seqlens.device}")


def _launch(r, k, v, w, u, state, cu_seqlens, seq_len: int, split: int | None) -> torch.Tensor:
    """cu_seqlens: int64 offsets on r's device, or None for B sequences of seq_len steps each."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"wkv6 (cupy): split must be one of {SPLITS}, got {split}")
    B, H = state.shape[:2]
    device = r.device.index
    split = split or default_split(B * H, _sm_count(device))
    y = torch.empty_like(r)
    args = (r, k, v, w, u, state, y, cu_seqlens)
    pointers = tuple(0 if t is None else t.data_ptr() for t in args)
    with cupy.cuda.Device(device):
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(r.device).cuda_stream, device)
        # Python ints travel as 64-bit values: the kernel takes pointers and long long.
        _kernel(device, r.dtype, split)((B * H * split,), (THREADS,), (*pointers, seq_len, H), stream=stream)
    return y


def wkv6_prefill_cupy(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    *,
    split: int | None = None,
) -> torch.Tensor:
    """As wkv6_prefill_torch, on a CUDA device with N = 64. `split` forces the blocks per head (tests and
    benchmarks; results are the same for every split)."""
    check_wkv6_args(r, k, v, w, u, state, cu_seqlens, decode=False)
    _check_launchable(r, k, v, w, u, state, cu_seqlens)
    if cu_seqlens is None:
        return _launch(r, k, v, w, u, state, None, r.shape[0], split)
    # Ordered on the current stream before the kernel; non_blocking spares a stream sync on every call (the
    # driver stages pageable memory before returning).
    offsets = cu_seqlens.to(r.device, torch.int64, non_blocking=True)
    return _launch(r, k, v, w, u, state, offsets, 0, split)


def wkv6_decode_cupy(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    *,
    split: int | None = None,
) -> torch.Tensor:
    """As wkv6_decode_torch: B sequences of one step, the same kernel as prefill."""
    check_wkv6_args(r, k, v, w, u, state, None, decode=True)
    _check_launchable(r, k, v, w, u, state, None)
    return _launch(r, k, v, w, u, state, None, 1, split)
