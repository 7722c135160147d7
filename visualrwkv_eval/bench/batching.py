"""bench batching: the CPU speed-up of batched evaluation, the mini benchmarks through the lmms-eval CLI at batch 1
and at batch 8, side by side in one run, with the tiny model. Generation time is what the plugin measures
(prefill + decode, lmms-eval's `throughput` section); the answers must be identical.

    visualrwkv-eval bench batching --out bench_results      # writes bench_results/cpu_batching.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch

from .common import environment, save

TARGET = 1.5  # speed-up of batch 8 over batch 1 that the batched CPU path was built to reach


def lmms_eval_answers(work: Path, batch_size: int) -> tuple[dict, dict]:
    """lmms-eval's throughput section and every task's answers (doc_id, filtered response), at one batch size."""
    from visualrwkv_eval.cli import lmms_eval_command, offline_env, results_file
    from visualrwkv_eval.tasks import MINI_GROUP

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench_results", help="folder for cpu_batching.json")


def run(args: argparse.Namespace) -> Path:
    from visualrwkv_eval.model.tiny import make_tiny
    from visualrwkv_eval.tasks import prepare_mini

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_tiny(work / "tiny", seed=0)
        prepare_mini(work, seed=0)
        (t1, a1), (t8, a8) = lmms_eval_answers(work, 1), lmms_eval_answers(work, 8)
    speedup = t1["total_elapsed_time"] / t8["total_elapsed_time"]
    result = {
        "benchmark": "mini benchmarks (visualrwkv_mini), tiny model, lmms-eval CLI",
        **environment(torch.device("cpu"), torch.float32),
        "threads": torch.get_num_threads(),
        "batch_1": t1,
        "batch_8": t8,
        "speedup_batch8_over_batch1": speedup,
        "answers_identical": a1 == a8,
        "target": f">= {TARGET}x",
        "meets_target": speedup >= TARGET,
    }
    path = save(result, Path(args.out), "cpu_batching")
    print(f"generation time: batch 1 {t1['total_elapsed_time']:.2f} s, batch 8 {t8['total_elapsed_time']:.2f} s")
    print(f"speed-up of batch 8 over batch 1: {speedup:.2f}x (answers identical: {a1 == a8}) -> {path}")
    return path
