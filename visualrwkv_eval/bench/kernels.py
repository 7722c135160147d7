"""bench kernels: the CuPy WKV6 kernels against the PyTorch reference on a GPU: correctness figures and
side-by-side timings in one run (CUDA events, median of several reps after warm-up), written as JSON.

    visualrwkv-eval bench kernels --out bench_results      # writes bench_results/kernels.json

Needs only torch, CuPy and the kernels (not lmms-eval or transformers), so that it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from pathlib import Path

import torch

from visualrwkv_eval.kernels import wkv6_decode, wkv6_prefill
from visualrwkv_eval.measure import seconds

from .common import save

DEVICE = torch.device("cuda")
H, N = 32, 64
PREFILL_TARGET = 5.0  # kernel / reference speed ratio for prefill at B=1, T=640 (bf16)
DECODE_TARGET = 10.0  # for a decode step at B=64
KERNEL_CALLS = 10  # back-to-back kernel calls per timed burst


def make_inputs(lengths: list[int], dtype: torch.dtype, seed: int = 0, decode: bool = False) -> tuple:
    """Realistic magnitudes: decays exp(-exp(w)) for w in [-6, 1.5], unit-variance r, k, v, u and state.

    Prefill: (r, k, v, w, u, state, cu_seqlens on the CPU, as the model passes it); decode: one step for each
    of len(lengths) sequences, without cu_seqlens."""
    g = torch.Generator().manual_seed(seed)
    T = len(lengths) if decode else sum(lengths)
    r, k, v = (torch.randn(T, H, N, generator=g) for _ in range(3))
    w = torch.rand(T, H, N, generator=g) * 7.5 - 6
    u = torch.randn(H, N, generator=g)
    state = torch.randn(len(lengths), H, N, N, generator=g).to(DEVICE)
    tensors = tuple(t.to(DEVICE, dtype) for t in (r, k, v, w, u)) + (state,)
    return tensors if decode else (*tensors, torch.tensor([0, *lengths]).cumsum(0))


def on_cpu(args: tuple) -> tuple:
    return tuple(t.cpu().clone() for t in args)


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max()).item()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double().cpu() - b.double().cpu()).abs().max().item()


def correctness() -> dict:
    """Kernel against the reference (run on the CPU: no TF32 anywhere), and its own invariants."""
    from visualrwkv_eval.kernels.wkv6.cupy import SPLITS, wkv6_prefill_cupy

    out = {}
    args = make_inputs([640], torch.float32, seed=1)
    ref = on_cpu(args)
    y, y_ref = wkv6_prefill(*args, backend="cupy"), wkv6_prefill(*ref, backend="torch")
    out["fp32_max_rel_err_y"] = max_rel_err(y, y_ref)
    out["fp32_max_rel_err_state"] = max_rel_err(args[5], ref[5])

    args = make_inputs([640], torch.bfloat16, seed=2)
    ref = on_cpu(args)
    y, y_ref = wkv6_prefill(*args, backend="cupy"), wkv6_prefill(*ref, backend="torch")
    out["bf16_mean_abs_err_y"] = (y.float().cpu() - y_ref.float()).abs().mean().item()
    out["bf16_max_rel_err_state"] = max_rel_err(args[5], ref[5])

    r, k, v, w, u, state, _ = make_inputs([640], torch.bfloat16, seed=3)
    whole, parts = state.clone(), state.clone()
    y = wkv6_prefill_cupy(r, k, v, w, u, whole)
    y_parts = [wkv6_prefill_cupy(r[a:b], k[a:b], v[a:b], w[a:b], u, parts) for a, b in ((0, 300), (300, 640))]
    out["state_carry_max_abs_diff"] = max(max_abs_diff(torch.cat(y_parts), y), max_abs_diff(parts, whole))

    lengths = [200, 0, 1, 333, 57]
    r, k, v, w, u, state, cu = make_inputs(lengths, torch.bfloat16, seed=4)
    initial = state.clone()
    y = wkv6_prefill_cupy(r, k, v, w, u, state, cu)
    alone = initial.clone()
    bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    y_alone = [
        wkv6_prefill_cupy(r[a:e], k[a:e], v[a:e], w[a:e], u, alone[i : i + 1]) for i, (a, e) in enumerate(bounds)
    ]
    out["packed_vs_separate_max_abs_diff"] = max(max_abs_diff(torch.cat(y_alone), y), max_abs_diff(alone, state))

    args = make_inputs([1] * 16, torch.float32, seed=5, decode=True)
    ref = on_cpu(args)
    y, y_ref = wkv6_decode(*args, backend="cupy"), wkv6_decode(*ref, backend="torch")
    out["decode_fp32_max_rel_err_y"] = max_rel_err(y, y_ref)
    out["decode_fp32_max_rel_err_state"] = max_rel_err(args[5], ref[5])

    r, k, v, w, u, state, _ = make_inputs([640], torch.bfloat16, seed=6)
    results = []
    for split in SPLITS:
        s = state.clone()
        results.append((wkv6_prefill_cupy(r, k, v, w, u, s, split=split), s))
    out["splits_max_abs_diff"] = max(
        max(max_abs_diff(y, results[0][0]), max_abs_diff(s, results[0][1])) for y, s in results
    )
    return out


def time_ms(fn: Callable[[], object], reps: int, calls: int = 1, warmup: int = 2) -> float:
    """Median milliseconds per call of `reps` bursts of `calls` back-to-back calls, between CUDA events."""
    return 1e3 * seconds(fn, DEVICE, reps=reps, warmup=warmup, calls=calls)


def compare(
    name: str, run: Callable[[str], object], batch: int, ref: tuple[int, int], target: float | None, sms: int
) -> dict:
    """Kernel and reference timed the same way; `ref` is (reps, calls) for the reference, bounded where it is slow."""
    from visualrwkv_eval.kernels.wkv6.cupy import default_split

    entry = {
        "case": name,
        "split": default_split(batch * H, sms),
        "kernel_ms": time_ms(lambda: run("cupy"), reps=10, calls=KERNEL_CALLS),
        "kernel_latency_ms": time_ms(lambda: run("cupy"), reps=10),  # one call, host overhead included
        "torch_ms": time_ms(lambda: run("torch"), *ref, warmup=1),
    }
    entry["speedup"] = entry["torch_ms"] / entry["kernel_ms"]
    if target is not None:
        entry |= {"target": target, "meets_target": entry["speedup"] >= target}
    print(
        f"{name:20s} kernel {entry['kernel_ms']:8.4f} ms (one call {entry['kernel_latency_ms']:8.4f})"
        f"  torch {entry['torch_ms']:9.3f} ms  x{entry['speedup']:6.1f}",
        flush=True,
    )
    return entry


def prefill_case(name: str, lengths: list[int], ref_reps: int, target: float | None, sms: int) -> dict:
    args = make_inputs(lengths, torch.bfloat16)
    entry = compare(
        name, lambda backend: wkv6_prefill(*args, backend=backend), len(lengths), (ref_reps, 1), target, sms
    )
    return {**entry, "B": len(lengths), "H": H, "T_total": sum(lengths)}


def decode_case(batch: int, target: float | None, sms: int) -> dict:
    args = make_inputs([1] * batch, torch.bfloat16, decode=True)
    entry = compare(
        f"decode B={batch}", lambda backend: wkv6_decode(*args, backend=backend), batch, (10, KERNEL_CALLS), target, sms
    )
    return {**entry, "B": batch, "H": H}


def split_timings() -> dict:
    """Each split forced, to check the default choice on this device."""
    from visualrwkv_eval.kernels.wkv6.cupy import SPLITS, wkv6_decode_cupy, wkv6_prefill_cupy

    prefill = make_inputs([640], torch.bfloat16)[:6]
    decode = make_inputs([1] * 64, torch.bfloat16, decode=True)
    return {
        "prefill B=1 T=640": {
            s: time_ms(lambda s=s: wkv6_prefill_cupy(*prefill, split=s), 10, KERNEL_CALLS) for s in SPLITS
        },
        "decode B=64": {s: time_ms(lambda s=s: wkv6_decode_cupy(*decode, split=s), 10, KERNEL_CALLS) for s in SPLITS},
    }


def graph_vs_eager() -> dict:
    """A 7B-like decode step's 32 WKV launches at batch 1, eager and replayed from one CUDA graph: what host
    overhead costs per launch when the kernel itself takes microseconds."""
    from visualrwkv_eval.kernels.cuda_graph import GraphedStep

    r, k, v, w, u, state = make_inputs([1], torch.bfloat16, decode=True)

    def step(x):
        for _ in range(32):
            x = wkv6_decode(x, k, v, w, u, state, backend="cupy")
        return x

    step(r)
    graphed = GraphedStep(step, r)
    eager_ms = time_ms(lambda: step(r), reps=10) / 32
    graph_ms = time_ms(lambda: graphed(r), reps=10) / 32
    return {"eager_ms_per_launch": eager_ms, "graph_ms_per_launch": graph_ms, "launches_per_step": 32}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench_results", help="folder for kernels.json")


def run(args: argparse.Namespace) -> Path:
    import cupy

    if not torch.cuda.is_available():
        raise SystemExit("bench kernels needs a CUDA device")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    mixed = (640 + torch.randint(-128, 129, (16,), generator=torch.Generator().manual_seed(0))).tolist()
    report = {
        "device": torch.cuda.get_device_name(0),
        "sm_count": sms,
        "torch": torch.__version__,
        "cupy": cupy.__version__,
        "nvrtc": ".".join(map(str, cupy.cuda.nvrtc.getVersion())),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype_timed": "bfloat16",
        "kernel_calls_per_burst": KERNEL_CALLS,
        "correctness": correctness(),
    }
    print(json.dumps(report["correctness"], indent=2), flush=True)
    report["prefill"] = [
        prefill_case("prefill B=1 T=640", [640], 5, PREFILL_TARGET, sms),
        prefill_case("prefill B=1 T=4096", [4096], 2, None, sms),
        prefill_case("prefill B=16 T~640", mixed, 2, None, sms),
    ]
    report["decode"] = [decode_case(b, DECODE_TARGET if b == 64 else None, sms) for b in (1, 16, 64)]
    report["split_ms"] = split_timings()
    report["decode_graph_vs_eager"] = graph_vs_eager()
    report["targets_met"] = all(e.get("meets_target", True) for e in report["prefill"] + report["decode"])
    path = save(report, Path(args.out), "kernels")
    print(f"split timings (ms): {report['split_ms']}\ntargets met: {report['targets_met']}\nwrote {path}")
    return path
