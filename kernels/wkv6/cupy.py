"""WKV6 CUDA kernels (wkv6.cu) launched through CuPy, with the same signatures and the same argument contract as
the PyTorch reference (reference.py, checks.py), plus N = 64.

The source is compiled at run time by NVRTC (cupy.RawModule), once per storage dtype and device; there is no
build step at install time. Tensors stay torch tensors: the kernels take raw pointers, torch allocates the
outputs, and every launch goes on torch's current stream. CuPy has no bf16 dtype, which is why nothing is
converted to CuPy arrays.

A launch is planned (`plan`: pure torch, no CUDA call) and then run (`_run_on_gpu`); the CPU emulation in the
tests runs the same plans through the unchanged kernel source. Inputs with unusual strides are copied to
contiguous ones (the kernel indexes dense rows); a non-contiguous state is updated through a contiguous copy.
Decode does no host-device copy and no synchronisation, so a decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from typing import NamedTuple

import cupy
import torch

from ..cupy_common import (
    _dense,
    _device_offsets,
    check_device,
    check_head_size,
    compile_options,
    launch_on_current_stream,
    probe_mismatch,
)
from .checks import check_wkv6_args
from .reference import wkv6_prefill_torch

HEAD_SIZE = 64
THREADS = HEAD_SIZE  # per block, whatever the split
SPLITS = (1, 2, 4)  # blocks per head: the entry points wkv6_split1, wkv6_split2, wkv6_split4


@functools.cache
def kernel_source() -> str:
    return files(__package__).joinpath("wkv6.cu").read_text()


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


class Launch(NamedTuple):  # a NamedTuple: built on every launch, and cheaper than a frozen dataclass
    """One kernel launch: entry point wkv6_split{split} on `grid` blocks of THREADS threads, with the kernel's
    arguments in order (r, k, v, w, u, state, y, cu_seqlens or None, seq_len, H)."""

    split: int
    grid: int
    tensors: tuple[torch.Tensor | None, ...]
    seq_len: int
    heads: int


def _check_launchable(r: torch.Tensor, split: int | None) -> None:
    """What the kernel needs beyond the shared contract."""
    check_head_size("wkv6", r, HEAD_SIZE)
    if split is not None and split not in SPLITS:
        raise ValueError(f"wkv6 (cupy): split must be one of {SPLITS}, got {split}")


def _check_device(r: torch.Tensor) -> None:
    check_device("wkv6", r)


def plan(r, k, v, w, u, state, cu_seqlens, *, decode: bool, split: int | None, sm_count: int):
    """(y, launch or None): the output tensor and the launch that fills it; None when there is nothing to compute
    (B * H = 0 or no time steps: the state stays as it is). Arguments as checked by check_wkv6_args."""
    y = torch.empty_like(r, memory_format=torch.contiguous_format)
    B, H = state.shape[:2]
    if B * H == 0 or r.shape[0] == 0:
        return y, None
    split = split or default_split(B * H, sm_count)
    offsets = None if cu_seqlens is None else _device_offsets(cu_seqlens, r.device)
    seq_len = 1 if decode else (r.shape[0] if cu_seqlens is None else 0)
    tensors = (*(_dense(t) for t in (r, k, v, w, u)), _dense(state), y, offsets)
    return y, Launch(split, B * H * split, tensors, seq_len, H)


def _run_on_gpu(launch: Launch) -> None:
    r = launch.tensors[0]
    kernel = _kernel(r.device.index, r.dtype, launch.split)
    launch_on_current_stream(kernel, launch.grid, THREADS, launch.tensors, launch.seq_len, launch.heads)


def _wkv6(r, k, v, w, u, state, cu_seqlens, *, decode: bool, split: int | None) -> torch.Tensor:
    check_wkv6_args(r, k, v, w, u, state, cu_seqlens, decode=decode)
    _check_launchable(r, split)
    _check_device(r)
    y, launch = plan(r, k, v, w, u, state, cu_seqlens, decode=decode, split=split, sm_count=_sm_count(r.device.index))
    if launch is not None:
        _run_on_gpu(launch)
        if launch.tensors[5] is not state:
            state.copy_(launch.tensors[5])
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
    return _wkv6(r, k, v, w, u, state, cu_seqlens, decode=False, split=split)


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
    """As wkv6_decode_torch: B sequences of one step, the same kernel as prefill. No host-device copy and no
    synchronisation: capturable in a CUDA graph (after one eager call has compiled the kernel)."""
    return _wkv6(r, k, v, w, u, state, None, decode=True, split=split)


def probe(device: int, dtype: torch.dtype) -> str | None:
    """Why the kernel cannot serve `dtype` on CUDA device `device`, or None: compiles every entry point, runs one
    small packed prefill and compares it with the reference on the CPU (kernels.probe_cupy calls this)."""
    for split in SPLITS:
        _kernel(device, dtype, split)
    gpu = torch.device("cuda", device)
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(9, 2, 64, generator=g) for _ in range(3))
    w = torch.rand(9, 2, 64, generator=g) * 7.5 - 6
    u = torch.randn(2, 64, generator=g)
    state = torch.randn(2, 2, 64, 64, generator=g)
    cu = torch.tensor([0, 4, 9])
    cpu = [t.to(dtype) for t in (r, k, v, w, u)]
    y_ref = wkv6_prefill_torch(*cpu, state_ref := state.clone(), cu)
    y = wkv6_prefill_cupy(*[t.to(gpu) for t in cpu], state_gpu := state.to(gpu), cu)
    return probe_mismatch(y, y_ref, state_gpu, state_ref, dtype)
