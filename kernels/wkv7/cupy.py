"""WKV7 CUDA kernel (wkv7.cu) launched through CuPy, with the same signatures and the same argument contract as
the PyTorch reference (reference.py, checks.py), plus N = 64.

As for WKV6 (kernels/wkv6/cupy.py; the helpers both share are in kernels/cupy_common.py): the source is compiled at
run time by NVRTC (cupy.RawModule), once per storage dtype and device; tensors stay torch tensors, passed to the
kernel as raw pointers (CuPy has no bf16 dtype); every launch goes on torch's current stream. A launch is planned
(`plan`: pure torch, no CUDA call) and then run (`_run_on_gpu`); the CPU emulation in the tests runs the same plans
through the unchanged kernel source. Inputs with unusual strides are copied to contiguous ones; a state that is
not contiguous (or not 16-byte aligned: the kernel moves state rows as float4) is updated through a copy.
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
from .checks import check_wkv7_args
from .reference import wkv7_prefill_torch

HEAD_SIZE = 64
THREADS = HEAD_SIZE  # one thread per value row of a head's state


@functools.cache
def kernel_source() -> str:
    return files(__package__).joinpath("wkv7.cu").read_text()


@functools.cache
def _module(dtype: torch.dtype) -> cupy.RawModule:
    return cupy.RawModule(code=kernel_source(), options=compile_options(dtype))


@functools.cache
def _kernel(device: int, dtype: torch.dtype) -> cupy.cuda.Function:
    """The compiled entry point, loaded on `device` (compiled on first use, then cached by CuPy on disk)."""
    with cupy.cuda.Device(device):
        return _module(dtype).get_function("wkv7").kernel


class Launch(NamedTuple):
    """One kernel launch: `grid` = B * H blocks of THREADS threads, with the kernel's arguments in order
    (r, w, k, v, a, b, state, y, cu_seqlens or None, seq_len, H)."""

    grid: int
    tensors: tuple[torch.Tensor | None, ...]
    seq_len: int
    heads: int


STATE, Y = 6, 7  # positions in Launch.tensors


def _check_launchable(r: torch.Tensor) -> None:
    check_head_size("wkv7", r, HEAD_SIZE)


def _check_device(r: torch.Tensor) -> None:
    check_device("wkv7", r)


def _kernel_state(state: torch.Tensor) -> torch.Tensor:
    """The state itself when the kernel can update it in place, else a contiguous, aligned copy."""
    if state.is_contiguous() and state.data_ptr() % 16 == 0:
        return state
    return state.clone(memory_format=torch.contiguous_format)  # a fresh allocation: aligned


def plan(r, w, k, v, a, b, state, cu_seqlens, *, decode: bool):
    """(y, launch or None): the output tensor and the launch that fills it; None when there is nothing to compute
    (B * H = 0 or no time steps: the state stays as it is). Arguments as checked by check_wkv7_args."""
    y = torch.empty_like(r, memory_format=torch.contiguous_format)
    B, H = state.shape[:2]
    if B * H == 0 or r.shape[0] == 0:
        return y, None
    offsets = None if cu_seqlens is None else _device_offsets(cu_seqlens, r.device)
    seq_len = 1 if decode else (r.shape[0] if cu_seqlens is None else 0)
    tensors = (*(_dense(t) for t in (r, w, k, v, a, b)), _kernel_state(state), y, offsets)
    return y, Launch(B * H, tensors, seq_len, H)


def _run_on_gpu(launch: Launch) -> None:
    r = launch.tensors[0]
    kernel = _kernel(r.device.index, r.dtype)
    launch_on_current_stream(kernel, launch.grid, THREADS, launch.tensors, launch.seq_len, launch.heads)


def _wkv7(r, w, k, v, a, b, state, cu_seqlens, *, decode: bool) -> torch.Tensor:
    check_wkv7_args(r, w, k, v, a, b, state, cu_seqlens, decode=decode)
    _check_launchable(r)
    _check_device(r)
    y, launch = plan(r, w, k, v, a, b, state, cu_seqlens, decode=decode)
    if launch is not None:
        _run_on_gpu(launch)
        if launch.tensors[STATE] is not state:
            state.copy_(launch.tensors[STATE])
    return y


def wkv7_prefill_cupy(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """As wkv7_prefill_torch, on a CUDA device with N = 64."""
    return _wkv7(r, w, k, v, a, b, state, cu_seqlens, decode=False)


def wkv7_decode_cupy(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
) -> torch.Tensor:
    """As wkv7_decode_torch: B sequences of one step, the same kernel as prefill. No host-device copy and no
    synchronisation: capturable in a CUDA graph (after one eager call has compiled the kernel)."""
    return _wkv7(r, w, k, v, a, b, state, None, decode=True)


def probe_inputs(T: int, H: int, B: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """r, w, k, v, a, b [T, H, 64] fp32 as RWKV-7 makes them (decays in (0.545, 1), a = -kappa, b = kappa * a with
    kappa unit-norm, a in (0, 1)) and a state [B, H, 64, 64]: the probe's launch, also used by the tests."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(T, H, HEAD_SIZE, generator=g) for _ in range(3))
    w = -torch.nn.functional.softplus(-2 * torch.randn(T, H, HEAD_SIZE, generator=g)) - 0.5
    kappa = torch.nn.functional.normalize(torch.randn(T, H, HEAD_SIZE, generator=g), dim=-1)
    a = torch.rand(T, H, HEAD_SIZE, generator=g)
    state = 0.5 * torch.randn(B, H, HEAD_SIZE, HEAD_SIZE, generator=g)
    return [r, w, k, v, -kappa, kappa * a, state]


def probe(device: int, dtype: torch.dtype) -> str | None:
    """Why the kernel cannot serve `dtype` on CUDA device `device`, or None: compiles the kernel, runs one small
    packed prefill and compares it with the reference on the CPU (kernels.probe_cupy calls this)."""
    _kernel(device, dtype)
    gpu = torch.device("cuda", device)
    *x, state = probe_inputs(9, 2, B=2)
    cu = torch.tensor([0, 4, 9])
    cpu = [t.to(dtype) for t in x]
    y_ref = wkv7_prefill_torch(*cpu, state_ref := state.clone(), cu)
    y = wkv7_prefill_cupy(*[t.to(gpu) for t in cpu], state_gpu := state.to(gpu), cu)
    return probe_mismatch(y, y_ref, state_gpu, state_ref, dtype)
