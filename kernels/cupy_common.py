"""What the CuPy launchers of every WKV op share (kernels/wkv6/cupy.py, kernels/wkv7/cupy.py): NVRTC options per
storage dtype, CuPy's view of torch's current stream, dense inputs, CPU offsets uploaded once per prefill, the
launch itself and the probe's comparison with the PyTorch reference.

Tensors stay torch tensors: the kernels take raw pointers (CuPy has no bf16 dtype), and every launch goes on
torch's current stream. Imported only with a launcher (importing the kernels package never imports CuPy).
"""

from __future__ import annotations

import functools

import cupy
import torch

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def compile_options(dtype: torch.dtype) -> tuple[str, ...]:
    """NVRTC options for one storage dtype, without the target architecture (CuPy adds the device's).

    CuPy always adds -ftz=true; it is spelled out so that a compile check with these options builds exactly
    what runs.
    """
    return (f"-DWKV_DTYPE_{_DTYPE_NAMES[dtype]}", "-ftz=true")


class _StreamHandle:
    """A raw stream handle seen through the CUDA stream protocol (for torch builds whose streams lack it)."""

    def __init__(self, handle: int):
        self.handle = handle

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.handle)


@functools.lru_cache(maxsize=64)
def _cupy_stream(device: int, handle: int):
    """CuPy's view of one of torch's streams, made once per (device, stream). CuPy 14 deprecates ExternalStream in
    favour of Stream.from_external (the CUDA stream protocol); CuPy 13 has only the former."""
    if hasattr(cupy.cuda.Stream, "from_external"):
        return cupy.cuda.Stream.from_external(_StreamHandle(handle))
    return cupy.cuda.ExternalStream(handle, device)


def check_device(op: str, r: torch.Tensor) -> None:
    if r.device.type != "cuda":
        raise ValueError(f"{op} (cupy): tensors must be on a CUDA device, got {r.device}; use kernel='torch'")


def check_head_size(op: str, r: torch.Tensor, head_size: int) -> None:
    if r.shape[-1] != head_size:
        raise ValueError(f"{op} (cupy): head size N must be {head_size}, got {r.shape[-1]}; use kernel='torch'")


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


# The model passes the same CPU offsets to every layer of a prefill: upload them once, not once per layer. Keyed by
# value (a CPU comparison, no synchronisation): inference-mode tensors keep no version counter.
_uploaded: tuple[torch.Tensor, torch.device, int, torch.Tensor] | None = None


def _device_offsets(cu_seqlens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """int64, contiguous, on `device`; offsets on the CPU are copied once per (values, device, stream)."""
    global _uploaded
    if cu_seqlens.device == device:
        return _dense(cu_seqlens.to(torch.int64))
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    seen = _uploaded
    if (
        seen is not None
        and seen[1:3] == (device, stream)
        and seen[0].shape == cu_seqlens.shape
        and torch.equal(seen[0], cu_seqlens.to(torch.int64))
    ):
        return seen[3]
    # Ordered on the current stream before the kernel; non_blocking spares a stream synchronisation (the driver
    # stages pageable memory before returning, so the CPU tensor may change afterwards).
    offsets = cu_seqlens.to(device, torch.int64, non_blocking=True).contiguous()
    _uploaded = (cu_seqlens.to(torch.int64, copy=True), device, stream, offsets)
    return offsets


def launch_on_current_stream(
    kernel, grid: int, threads: int, tensors: tuple[torch.Tensor | None, ...], *scalars: int
) -> None:
    """Run `kernel` (a cupy.cuda.Function loaded on the tensors' device) on `grid` blocks of `threads` threads,
    with the tensors' pointers (0 for None) and then `scalars` as arguments, on torch's current stream."""
    r = tensors[0]
    device = r.device.index
    stream = _cupy_stream(device, torch.cuda.current_stream(r.device).cuda_stream)
    pointers = tuple(0 if t is None else t.data_ptr() for t in tensors)
    # The module was loaded on `device`; the launch needs that device's context current. Python ints travel as
    # 64-bit values: the kernel takes pointers and long long.
    with cupy.cuda.Device(device):
        kernel((grid,), (threads,), (*pointers, *scalars), stream=stream)


def probe_mismatch(
    y: torch.Tensor, y_ref: torch.Tensor, state: torch.Tensor, state_ref: torch.Tensor, dtype: torch.dtype
) -> str | None:
    """Why a probe launch's output and state (on the GPU) do not match the reference's (on the CPU), or None."""
    torch.cuda.synchronize(y.device)
    y, y_ref = y.float().cpu(), y_ref.float()
    err = max(((y - y_ref).abs().max() / y_ref.abs().max()).item(),
              ((state.cpu() - state_ref).abs().max() / state_ref.abs().max()).item())  # fmt: skip
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    if not err <= tolerance:  # NaN fails too
        return f"the probe launch differs from the PyTorch reference (max relative error {err:.3g} > {tolerance})"
    return None
