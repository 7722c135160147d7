"""Every GPU figure of the WKV6 kernels in one run, within a hard time budget (scripts/gpu_check.sh runs it).

Sections run in order of value; each one's result (or error) is written to OUT/gpu_check.json as soon as it ends,
so a run cut short still brings back everything finished before. A section that would not fit in the time left
is recorded as skipped. Without a CUDA device the run stops after `environment`, saying so, with exit status 2.

    python scripts/gpu_check.py --out OUT --budget-s 450
    python scripts/gpu_check.py --sanitizer-target     # small launches only, for compute-sanitizer
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


class Report:
    """gpu_check.json: sections in run order, each with its status, seconds and figures; rewritten after each."""

    def __init__(self, out: Path, budget_s: float):
        self.path = out / "gpu_check.json"
        self.start, self.budget_s = time.monotonic(), budget_s
        self.data = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "budget_s": budget_s, "complete": False, "sections": {}}  # fmt: skip
        self.save()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.start, 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(self.path)  # never a half-written file

    def run(self, name: str, fn: Callable[[], dict], needs_s: float) -> dict | None:
        if self.left() < needs_s:
            self.data["sections"][name] = {
                "status": "skipped",
                "reason": f"{self.left():.0f} s left, needs ~{needs_s:.0f}",
            }
            self.save()
            return None
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        t0 = time.monotonic()
        try:
            result = fn()
            # a section reports wrong results under "problems" and keeps its figures
            result = {"status": "failed" if result.get("problems") else "ok", **result}
        except Exception as e:
            result = {
                "status": "error",
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-3000:],
            }
        result["seconds"] = round(time.monotonic() - t0, 1)
        self.data["sections"][name] = result
        self.save()
        print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, default=str)[:2000], flush=True)
        return result


# --- sections --------------------------------------------------------------------------------------------------


def environment() -> dict:
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}  # fmt: skip
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
        env["nvidia_smi"] = subprocess.run(
            [smi, query, "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
    try:
        import cupy

        env["cupy"] = cupy.__version__
        env["nvrtc"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
        if env["cuda_available"]:
            env["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
            env["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    except Exception as e:
        env["cupy_error"] = f"{type(e).__name__}: {e}"
    env["compute_sanitizer"] = find_sanitizer()
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env |= {"device": props.name, "sm_count": props.multi_processor_count,
                "capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1)}  # fmt: skip
    return env


def inputs(T: int, H: int, dtype: torch.dtype, B: int = 1, seed: int = 0, device: str = "cuda"):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(T, H, 64, generator=g) for _ in range(3))
    w = torch.rand(T, H, 64, generator=g) * 7.5 - 6
    u = torch.randn(H, 64, generator=g)
    state = torch.randn(B, H, 64, 64, generator=g)
    return [t.to(device, dtype) for t in (r, k, v, w, u)] + [state.to(device)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max()).item()


def probe() -> dict:
    from visualrwkv_eval.kernels import probe_cupy

    device = torch.device("cuda", 0)
    reasons = {str(d): probe_cupy(device, d) for d in (torch.float32, torch.bfloat16, torch.float16)}
    if any(reasons.values()):
        raise RuntimeError(f"probe failed: {reasons}")
    return {"probe_failures": reasons}


def kernel_attributes() -> dict:
    """Registers, local (spill) memory and static shared memory of every entry point as loaded on this device."""
    from visualrwkv_eval.kernels.wkv6 import cupy as wkv6_cupy
    from visualrwkv_eval.kernels.wkv7 import cupy as wkv7_cupy

    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for split in wkv6_cupy.SPLITS:
            attrs = wkv6_cupy._module(dtype).get_function(f"wkv6_split{split}").attributes
            keys = ("num_regs", "local_size_bytes", "shared_size_bytes", "max_threads_per_block", "binary_version")
            out[f"{str(dtype).removeprefix('torch.')}/split{split}"] = {k: attrs.get(k) for k in keys}
        attrs = wkv7_cupy._module(dtype).get_function("wkv7").attributes
        out[f"wkv7/{str(dtype).removeprefix('torch.')}"] = {k: attrs.get(k) for k in keys}
    return {"entry_points": out}


def gpu_tests(budget_s: float, out: Path) -> dict:
    log = out / "pytest_gpu.log"
    tests = ("tests/test_kernels.py", "tests/test_wkv7_kernels.py")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget_s)
        text, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        text, code = f"{e.stdout or ''}\n{e.stderr or ''}\nTIMEOUT after {budget_s:.0f} s", None
        text = text if isinstance(text, str) else text.decode(errors="replace")
    log.write_text(text)
    summary = next((line for line in reversed(text.splitlines()) if re.search(r"passed|failed|error", line)), "")
    failed = re.findall(r"^FAILED .*", text, re.M)
    if code != 0:
        raise RuntimeError(f"pytest exit {code}: {summary}; {failed[:10]}")
    return {"summary": summary}


def graph_capture() -> dict:
    """The decode kernel and the tiny model's whole decode step, replayed from CUDA graphs, against eager."""
    from visualrwkv_eval.kernels.cuda_graph import GraphedStep
    from visualrwkv_eval.kernels.wkv6.cupy import wkv6_decode_cupy

    steps = [inputs(16, 32, torch.bfloat16, B=16, seed=s) for s in range(4)]
    u, initial = steps[0][4], steps[0][5]
    wkv6_decode_cupy(*steps[0][:4], u, initial.clone())
    eager_state, graph_state = initial.clone(), initial.clone()
    graphed = GraphedStep(lambda r, k, v, w: wkv6_decode_cupy(r, k, v, w, u, graph_state), *steps[0][:4])
    kernel_equal = True
    for step in steps:
        kernel_equal &= torch.equal(graphed(*step[:4]).clone(), wkv6_decode_cupy(*step[:4], u, eager_state))
    kernel_equal &= torch.equal(graph_state, eager_state)
    result = {"kernel_decode_graph_equals_eager": kernel_equal, **model_graph()}
    result["problems"] = [k for k, v in result.items() if k.endswith("equals_eager") and v is not True]
    return result


def model_graph() -> dict:
    from visualrwkv_eval.kernels.cuda_graph import GraphedStep
    from visualrwkv_eval.model.tiny import random_model

    model = random_model("tiny", dtype=torch.bfloat16, device="cuda", kernel="cupy")
    ids = model.tokenizer.encode("A question about a picture")
    rows = model.embed_tokens(ids)
    batch = 4
    _, state = model.prefill([(rows, None)] * batch)
    tokens = torch.tensor([11, 22, 33, 44], device="cuda")
    model.decode(tokens, state.select(torch.arange(batch)))  # eager once, on a copy of the state
    eager, graphed_state = state.select(torch.arange(batch)), state.select(torch.arange(batch))
    step = GraphedStep(lambda t: model.decode(t, graphed_state), tokens)
    equal = True
    for i in range(4):
        t = (tokens + i) % 1000
        equal &= torch.equal(step(t).clone(), model.decode(t, eager))
    equal &= torch.equal(graphed_state.wkv, eager.wkv)
    return {"model_decode_graph_equals_eager": equal, "model": "tiny, bf16, batch 4, 4 steps"}


def side_stream() -> dict:
    from visualrwkv_eval.kernels import wkv6_prefill

    r, k, v, w, u, state = inputs(64, 4, torch.bfloat16, seed=3)
    expected_state = state.clone()
    expected = wkv6_prefill(r, k, v, w, u, expected_state, backend="cupy")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    torch.cuda._sleep(1_000_000_000)
    busy = torch.cuda.Event()
    busy.record()
    t0 = time.perf_counter()
    with torch.cuda.stream(side):
        y = wkv6_prefill(r, k, v, w, u, state, backend="cupy").clone()
        state_after = state.clone()
    side.synchronize()
    side_ms = (time.perf_counter() - t0) * 1e3
    default_still_busy = not busy.query()
    torch.cuda.synchronize()
    ok = default_still_busy and torch.equal(y, expected) and torch.equal(state_after, expected_state)
    if not ok:
        raise RuntimeError(f"side stream: busy={default_still_busy}, equal={torch.equal(y, expected)}")
    return {"side_stream_ms": round(side_ms, 3), "default_stream_still_busy": default_still_busy}


def offsets_past_2_31() -> dict:
    """Prefill rows and decode state beyond 2^31 elements, on real allocations (about 8 + 8 GiB)."""
    from visualrwkv_eval.kernels import wkv6_decode, wkv6_prefill

    out = {}
    H, L = 1, 40
    first = 2**31 // (H * 64) + 5  # the sequence starts 2^31 + 320 elements in
    big = torch.empty(first + L, H, 64, dtype=torch.bfloat16, device="cuda")
    r, _, _, _, u, state = inputs(L, H, torch.bfloat16, seed=5)
    big[first:] = r  # r = k = v = w: one buffer serves all four
    cu = torch.tensor([first, first + L], device="cuda")  # offsets on the GPU are trusted, not checked
    s_far, s_near = state.clone(), state.clone()
    y_far = wkv6_prefill(big, big, big, big, u, s_far, cu, backend="cupy")[first:]
    y_near = wkv6_prefill(r, r, r, r, u, s_near, backend="cupy")
    out["prefill_rows_past_2_31_equal"] = torch.equal(y_far, y_near) and torch.equal(s_far, s_near)
    del big, y_far
    B = 2**31 // (64 * 64) + 3  # state offsets of the last sequences pass 2^31 elements
    state_big = torch.zeros(B, 1, 64, 64, device="cuda")
    rd, kd, vd, wd, ud, s0 = inputs(B, 1, torch.float32, seed=6)
    rd, kd, vd, wd = (t.view(B, 1, 64) for t in (rd, kd, vd, wd))
    state_big[-3:] = s0.expand(3, -1, -1, -1)
    y = wkv6_decode(rd, kd, vd, wd, ud, state_big, backend="cupy")
    s_ref = s0.expand(3, -1, -1, -1).clone()
    y_ref = wkv6_decode(rd[-3:], kd[-3:], vd[-3:], wd[-3:], ud, s_ref, backend="torch")
    out["decode_state_past_2_31_rel_err"] = max(rel_err(y[-3:], y_ref), rel_err(state_big[-3:], s_ref))
    if not out["prefill_rows_past_2_31_equal"] or out["decode_state_past_2_31_rel_err"] > 1e-5:
        raise RuntimeError(f"wrong results past 2^31: {out}")
    return out


def long_sequence() -> dict:
    """One 24K-token sequence: the kernel against the PyTorch reference (fp32 on the GPU, TF32 off)."""
    from visualrwkv_eval.kernels import wkv6_prefill

    torch.backends.cuda.matmul.allow_tf32 = False
    out = {"T": 24576, "H": 8}
    for dtype in (torch.float32, torch.bfloat16):
        args = inputs(24576, 8, dtype, seed=7)
        ref = [t.float() for t in args[:5]] + [args[5].clone()]
        y_ref = wkv6_prefill(*ref, backend="torch")
        y = wkv6_prefill(*args, backend="cupy")
        name = str(dtype).removeprefix("torch.")
        out[f"{name}_max_rel_err_y"] = rel_err(y, y_ref)
        out[f"{name}_mean_abs_err_y"] = (y.float() - y_ref).abs().mean().item()
        out[f"{name}_max_rel_err_state"] = rel_err(args[5], ref[5])
    return out


def host_overhead() -> dict:
    """Host microseconds per decode launch (B=1, H=32, bf16), the GPU kept ahead; and per layer in a graph."""
    from visualrwkv_eval.kernels import wkv6_decode
    from visualrwkv_eval.kernels.cuda_graph import GraphedStep

    r, k, v, w, u, state = inputs(1, 32, torch.bfloat16)
    for _ in range(20):
        wkv6_decode(r, k, v, w, u, state, backend="cupy")
    torch.cuda.synchronize()
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        wkv6_decode(r, k, v, w, u, state, backend="cupy")
    host_us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    gpu_us = (time.perf_counter() - t0) / n * 1e6

    def layers(r_):
        y = r_
        for _ in range(32):
            y = wkv6_decode(y, k, v, w, u, state, backend="cupy")
        return y

    graphed = GraphedStep(layers, r)
    for _ in range(5):
        graphed(r)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(100):
        graphed(r)
    torch.cuda.synchronize()
    graph_us = (time.perf_counter() - t0) / 100 / 32 * 1e6
    return {"host_us_per_decode_launch": round(host_us, 2), "wall_us_per_decode_launch": round(gpu_us, 2),
            "graph_us_per_decode_launch": round(graph_us, 2)}  # fmt: skip


def tiny_model() -> dict:
    """The tiny model with kernel=cupy against kernel=torch: logits and greedy tokens, fp32 and bf16."""
    from PIL import Image

    from visualrwkv_eval.model import load_model
    from visualrwkv_eval.model.tiny import make_tiny

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny(Path(tmp), seed=0, stop_logit=0.0)
        image = Image.new("RGB", (64, 48), "red")
        for dtype in ("float32", "bfloat16"):
            models = {kernel: load_model(str(tiny / "model.pth"), vision_tower=str(tiny / "vision_tower"),
                                         dtype=dtype, device="cuda", kernel=kernel) for kernel in ("cupy", "torch")}  # fmt: skip
            assert models["cupy"].backend == "cupy" and models["torch"].backend == "torch"
            ids = models["torch"].tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 8)
            logits = {kernel: m.text_logits(ids).float() for kernel, m in models.items()}
            answers = {
                kernel: m.generate("What is in the image?", [image], max_new_tokens=24) for kernel, m in models.items()
            }
            out[dtype] = {"max_abs_logit_diff": (logits["cupy"] - logits["torch"]).abs().max().item(),
                          "greedy_argmax_agreement": (logits["cupy"].argmax(-1) == logits["torch"].argmax(-1)).float().mean().item(),
                          "answers_equal": answers["cupy"] == answers["torch"], "answers": answers}  # fmt: skip
    # fp32 must agree; bf16 rounds differently in the kernel and the reference, so a near-tie may flip there
    fp32 = out["float32"]
    if fp32["max_abs_logit_diff"] > 1e-3 or not fp32["answers_equal"]:
        out["problems"] = ["fp32 kernel=cupy differs from kernel=torch"]
    return out


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH or where CUDA toolkits put it."""
    found = shutil.which("compute-sanitizer")
    candidates = [
        Path("/usr/local/cuda/bin/compute-sanitizer"),
        *Path("/usr/local").glob("cuda-*/bin/compute-sanitizer"),
    ]
    return found or next((str(p) for p in candidates if p.exists()), None)


@torch.inference_mode()
def rwkv7_model() -> dict:
    """The RWKV-7 language model at the 0B1 shape (random x070 weights) with the WKV7 kernel against the PyTorch
    reference: packed prefill logits of two prompts and 16 teacher-forced decode steps, fp32 and bf16, plus batch-1 timings."""
    from visualrwkv_eval.model.packing import Packing
    from visualrwkv_eval.model.rwkv7 import RWKV7
    from visualrwkv_eval.model.tiny7 import random_rwkv7_state_dict, size_config7

    cfg, out = size_config7("0b1"), {}
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 65529, (n,), generator=g) for n in (1040, 77)]
    forced = torch.randint(0, 65529, (16, 2), generator=g).cuda()
    for dtype in (torch.float32, torch.bfloat16):
        lm = RWKV7.from_weights(random_rwkv7_state_dict(cfg, seed=0, dtype=dtype)).cuda()
        res = {}
        for backend in ("cupy", "torch"):
            lm.use_backend(backend)
            state = lm.new_state(2)
            ids = torch.cat(prompts).cuda()
            pack = Packing.from_lengths([len(p) for p in prompts], ids.device)
            hidden = lm(lm.embed_tokens(ids), state, pack)
            logits = [lm.logits(pack.last_rows(hidden))]
            for token in forced:  # the same tokens for both backends: a flipped near-tie must not fork the paths
                hidden = lm(lm.embed_tokens(token), state, Packing.for_decode())
                logits.append(lm.logits(hidden))
            torch.cuda.synchronize()
            res[backend] = torch.stack(logits).float()
            one = lm.new_state(1)
            ids1 = prompts[0].cuda()
            t0 = time.perf_counter()
            lm(lm.embed_tokens(ids1), one, Packing.from_lengths([len(ids1)], ids1.device))
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            tok = ids1[-1:]
            for _ in range(32):
                lm(lm.embed_tokens(tok), one, Packing.for_decode())
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            res[f"{backend}_timing"] = {"prefill_tok_s": len(ids1) / (t1 - t0), "decode_ms": (t2 - t1) / 32 * 1e3}
        diff = (res["cupy"] - res["torch"]).abs().max().item()
        agree = (res["cupy"].argmax(-1) == res["torch"].argmax(-1)).float().mean().item()
        out[str(dtype).removeprefix("torch.")] = {"max_abs_logit_diff": diff, "argmax_agreement": agree,
                                                   "timing_cupy": res["cupy_timing"], "timing_torch": res["torch_timing"]}  # fmt: skip
        del lm
        torch.cuda.empty_cache()
    if out["float32"]["max_abs_logit_diff"] > 1e-3:
        raise RuntimeError(f"RWKV-7 fp32 logits: cupy and torch differ: {out}")
    return out


def sanitizers(budget_s: float, out: Path) -> dict:
    tool = find_sanitizer()
    if tool is None:
        return {"available": False}
    results, log = {}, []
    each = budget_s / 3
    target = [sys.executable, str(Path(__file__).resolve()), "--sanitizer-target"]
    for name in ("memcheck", "racecheck", "synccheck"):
        # only the WKV kernels are instrumented (kernel-name substring filter); older tools lack the filter
        for only_wkv in (True, False):
            flags = ["--kernel-name", "kns=wkv"] if only_wkv else []  # wkv6_split* and wkv7
            cmd = [tool, "--tool", name, *flags, "--error-exitcode", "9", *target]
            try:
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=each)
                text = done.stdout + done.stderr
            except subprocess.TimeoutExpired:
                text, done = f"timeout after {each:.0f} s", None
            summary = re.findall(r"ERROR SUMMARY: .*|RACECHECK SUMMARY: .*", text)
            if done is None or summary or not only_wkv:
                break
        results[name] = {"exit": None if done is None else done.returncode, "filtered": only_wkv,
                         "summary": summary[-1] if summary else text[-300:]}  # fmt: skip
        log.append(f"==== {' '.join(cmd)}\n{text[-20000:]}")
    (out / "sanitizer.log").write_text("\n".join(log))
    if any(r["exit"] != 0 for r in results.values()):
        raise RuntimeError(f"compute-sanitizer: {results}")
    return {"available": True, **results}


def sanitizer_target() -> None:
    """Small launches of every entry point and dtype (WKV6 splits, WKV7): packed prefill (lengths 0, 9, 17) and a
    decode step."""
    from visualrwkv_eval.kernels.wkv6.cupy import SPLITS, wkv6_decode_cupy, wkv6_prefill_cupy
    from visualrwkv_eval.kernels.wkv7.cupy import wkv7_decode_cupy, wkv7_prefill_cupy

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        r, k, v, w, u, state = inputs(26, 2, dtype, B=3)
        cu = torch.tensor([0, 0, 9, 26])
        for split in SPLITS:
            wkv6_prefill_cupy(r, k, v, w, u, state, cu, split=split)
            wkv6_decode_cupy(r[:3], k[:3], v[:3], w[:3], u, state, split=split)
        # WKV7: the same packing; a = -kappa, b = kappa * a with kappa unit-norm per head, as the model calls it
        kappa = torch.nn.functional.normalize(k.float(), dim=-1)
        a_lr = torch.sigmoid(u.float()).expand_as(kappa)
        a, b = (-kappa).to(dtype), (kappa * a_lr).to(dtype)
        wkv7_prefill_cupy(r, w, k, v, a, b, state, cu)
        wkv7_decode_cupy(r[:3], w[:3], k[:3], v[:3], a[:3], b[:3], state)
    torch.cuda.synchronize()
    print("sanitizer target done")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_results")))
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget of this run")
    parser.add_argument("--sanitizer-target", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sanitizer_target:
        sanitizer_target()
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out, args.budget_s)
    env = report.run("environment", environment, 0)
    if not (env and env.get("cuda_available")):
        report.data["reason"] = "no CUDA device: nothing to check on this machine"
        report.save()
        print(report.data["reason"], file=sys.stderr)
        return 2
    report.run("probe", probe, 30)
    report.run("kernel_attributes", kernel_attributes, 10)
    report.run("side_stream", side_stream, 10)
    report.run("graph_capture", graph_capture, 30)
    report.run("host_overhead", host_overhead, 15)
    # a floor, so that a run given a short deadline still tries the tests (they take about 15 s on an H200)
    report.run("gpu_tests", lambda: gpu_tests(max(30.0, min(180.0, report.left() - 150)), args.out), 60)
    report.run("offsets_past_2_31", offsets_past_2_31, 30)
    report.run("long_sequence", long_sequence, 30)
    report.run("tiny_model", tiny_model, 45)
    report.run("rwkv7_model", rwkv7_model, 40)
    report.run("sanitizers", lambda: sanitizers(min(150.0, report.left() - 5), args.out), 45)
    statuses = [section["status"] for section in report.data["sections"].values()]
    report.data["complete"] = all(s == "ok" for s in statuses)
    report.save()
    print(f"sections: {dict(zip(report.data['sections'], statuses))}")
    return 0 if report.data["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
