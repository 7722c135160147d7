"""Load-time cost of the weight finiteness check (issue #11) on a real-shaped random checkpoint, on CPU.

    visualrwkv-eval make-tiny /tmp/m1b6 --size 1b6
    python benchmarks/finite_check.py /tmp/m1b6 --out benchmarks/results/cpu/finite_check_1b6.json

For each dtype, three times: load_model with and without the check, the check alone over the tensors it reads
(the file's for a widening load, the model's otherwise), and torch.isfinite(t).all() over the same tensors.
Each figure is (wall s, CPU s); the machine's other load is recorded, since it widens the spread.

Not a `visualrwkv-eval bench` module, unlike the other performance code: it is the one-off measurement behind a
design decision (is the load-time check cheap enough to stay on), and it gets there by patching the model's
loader (`check_weights`), which no command a user runs should do. Its timer takes CPU seconds beside wall
seconds, a question visualrwkv_eval.measure's timer does not ask.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import visualrwkv_eval.model.visualrwkv as vr
from visualrwkv_eval.model.checkpoint import nonfinite_tensors


def clock(fn, *args, **kwargs):
    c, w = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (round(time.perf_counter() - w, 2), round(time.process_time() - c, 2))


def isfinite_all(named: dict[str, torch.Tensor]) -> list[bool]:
    """The obvious check, for comparison: one bool temporary the size of each tensor."""
    return [bool(torch.isfinite(v).all()) for v in named.values() if v.is_floating_point()]


def measure(folder: Path, dtype: str, repeats: int) -> dict:
    path, tower = folder / "model.pth", folder / "vision_tower"
    real = vr.check_weights
    r: dict = {"load_with": [], "load_without": [], "check": [], "isfinite_all_same_tensors": []}
    try:
        for _ in range(repeats):
            for key in ("load_with", "load_without"):
                vr.check_weights = real if key == "load_with" else (lambda *a: None)
                model, t = clock(vr.load_model, str(path), vision_tower=str(tower), dtype=dtype, device="cpu")
                r[key].append(t)
                if key == "load_with":
                    ckpt = vr.load_checkpoint(path, check_values=False)
                    stored = max(v.dtype.itemsize for v in ckpt.rwkv.values())
                    named = ckpt.tensors() if stored < model.dtype.itemsize else model.state_dict()
                    r["check"].append(clock(nonfinite_tensors, named)[1])
                    r["isfinite_all_same_tensors"].append(clock(isfinite_all, named)[1])
                    r["params"] = sum(v.numel() for v in named.values())
                    del ckpt, named
                del model
    finally:
        vr.check_weights = real
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="output of visualrwkv-eval make-tiny OUT --size 1b6")
    ap.add_argument("--out", type=Path, default=Path("finite_check.json"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    res = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    for dtype in ("bfloat16", "float32"):
        res[dtype] = measure(args.folder, dtype, args.repeats)
        print(dtype, json.dumps(res[dtype]), flush=True)
    res["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
