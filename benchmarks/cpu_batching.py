"""CPU speed-up of batched evaluation: the mini benchmarks through the lmms-eval CLI at batch 1 and at batch 8,
side by side in one run, with the tiny model. Generation time is what the plugin measures (prefill + decode,
lmms-eval's `throughput` section); the answers must be identical.

    python benchmarks/cpu_batching.py --out bench_results/cpu_batching.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

from visualrwkv_eval.cli import lmms_eval_command, offline_env, results_file
from visualrwkv_eval.model.tiny import make_tiny
from visualrwkv_eval.tasks import MINI_GROUP, prepare_mini


def run(work: Path, batch_size: int) -> tuple[dict, dict]:
    tiny = work / "tiny"
    out = work / f"results_b{batch_size}"
    cmd = lmms_eval_command(
        tiny / "model.pth", tiny / "vision_tower", MINI_GROUP, out, "--batch_size", str(batch_size),
        "--log_samples", include_path=work / "tasks", model_args=",dtype=float32",
    )  # fmt: skip
    subprocess.run(cmd, check=True, env=offline_env(work), capture_output=True)
    path = results_file(out)
    answers = {}
    for f in path.parent.glob("*_samples_*.jsonl"):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        answers[f.stem.split("_samples_")[1]] = sorted((r["doc_id"], r["filtered_resps"]) for r in rows)
    return json.loads(path.read_text())["throughput"], answers


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench_results/cpu_batching.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_tiny(work / "tiny", seed=0)
        prepare_mini(work, seed=0)
        (t1, a1), (t8, a8) = run(work, 1), run(work, 8)
    speedup = t1["total_elapsed_time"] / t8["total_elapsed_time"]
    result = {
        "benchmark": "mini benchmarks (visualrwkv_mini), tiny model, lmms-eval CLI",
        "device": cpu_name(),
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "batch_1": t1,
        "batch_8": t8,
        "speedup_batch8_over_batch1": speedup,
        "answers_identical": a1 == a8,
        "target": ">= 1.5x",
        "meets_target": speedup >= 1.5,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"generation time: batch 1 {t1['total_elapsed_time']:.2f} s, batch 8 {t8['total_elapsed_time']:.2f} s")
    print(f"speed-up of batch 8 over batch 1: {speedup:.2f}x (answers identical: {a1 == a8}) -> {args.out}")


if __name__ == "__main__":
    main()
