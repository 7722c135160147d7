"""The `visualrwkv-eval` command line: make-tiny, tasks, demo, bench."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from visualrwkv_eval.model.tiny import SIZES

MINI_NOTE = (
    "The demo model has random weights: its scores are meaningless. The run proves the pipeline (model, "
    "lmms-eval's task code for all eight benchmarks, metrics, sample logs, submission files)."
)


def _make_tiny(args: argparse.Namespace) -> None:
    from visualrwkv_eval.model.tiny import make_tiny

    out = make_tiny(args.out, seed=args.seed, size=args.size)
    print(f"wrote {out / 'model.pth'} and {out / 'vision_tower'}")


def _tasks(args: argparse.Namespace) -> None:
    from visualrwkv_eval.tasks import prepare_mini

    tasks = prepare_mini(args.out, seed=args.seed)
    print(f"mini benchmarks in {Path(args.out) / 'data'}; task YAMLs in {tasks}")
    print(f"run them with: lmms-eval --include_path {tasks} --tasks visualrwkv_mini (or visualrwkv_paper) ...")


def offline_env(out: Path) -> dict[str, str]:
    """Environment for an offline lmms-eval run with its datasets cache under `out`."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "LMMS_EVAL_DATASETS_CACHE": str(out / "hf_datasets"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def lmms_eval_command(
    pretrained: Path,
    vision_tower: Path,
    tasks: str,
    output_path: Path,
    *extra: str,
    include_path: Path | None = None,
    model_args: str = "",
    launcher: tuple[str, ...] = (sys.executable,),
) -> list[str]:
    """The lmms-eval command line for model `visualrwkv` (the demo, the benchmarks and the tests share it).
    `model_args` is appended to pretrained and vision_tower (",dtype=float32,..."); `launcher` may be torchrun."""
    include = ["--include_path", str(include_path)] if include_path is not None else []
    return [*launcher, "-m", "lmms_eval", "--model", "visualrwkv",
            "--model_args", f"pretrained={pretrained},vision_tower={vision_tower}{model_args}",
            "--tasks", tasks, *include, "--output_path", str(output_path), "--process_docs_parallel", "1",
            *extra]  # fmt: skip


def results_file(output_path: Path) -> Path:
    """The newest lmms-eval results JSON under an --output_path."""
    found = sorted(output_path.glob("*/[0-9]*_results.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"lmms-eval wrote no results under {output_path}")
    return found[-1]


def _demo(args: argparse.Namespace) -> None:
    from visualrwkv_eval.model.tiny import make_tiny
    from visualrwkv_eval.tasks import MINI_GROUP, prepare_mini

    out = Path(args.out).resolve()
    tiny = out / "tiny"
    if not (tiny / "model.pth").is_file():
        make_tiny(tiny, seed=0)
    tasks = prepare_mini(out, seed=0)
    results = out / "results"
    cmd = lmms_eval_command(
        tiny / "model.pth", tiny / "vision_tower", MINI_GROUP, results, "--batch_size", str(args.batch_size),
        "--log_samples", include_path=tasks, model_args=",dtype=float32",
    )  # fmt: skip
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=offline_env(out))
    # lmms-eval exits 0 even when the evaluation failed: check what it wrote
    path = results_file(results)
    written = json.loads(path.read_text())["results"]
    missing = [t for t in _mini_tasks(tasks) if t not in written]
    if missing:
        sys.exit(f"lmms-eval produced no results for {', '.join(missing)}; see the log above")
    print(f"\nresults: {path}\nsamples: {path.parent}\n{MINI_NOTE}")


def _bench(args: argparse.Namespace) -> None:
    import torch

    from visualrwkv_eval.bench import DTYPES, eval_throughput, length, peer, roofline, scale

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    if getattr(args, "lengths", "") is None:
        args.lengths = "1024,2048,4096,8192,16384,24576" if device.type == "cuda" else "1024,2048,4096,8192"
    {"length": length, "eval": eval_throughput, "roofline": roofline, "scale": scale, "peer": peer}[args.what].run(
        args, device, dtype
    )


def _mini_tasks(tasks: Path) -> list[str]:
    import yaml

    return yaml.safe_load((tasks / "mini" / "_visualrwkv_mini.yaml").read_text())["task"]


def _scale_parser(bench) -> None:
    b = bench.add_parser("scale", help="samples/s and peak memory against rows, through the lmms-eval CLI")
    b.add_argument("--preset", default="vqav2_testdev", help="data set whose rows / distinct images to mimic")
    b.add_argument("--rows", default="100,1000", help="comma-separated row counts (lmms-eval --limit)")
    b.add_argument("--preset-rows", type=int, default=None, help="rows in the generated data (default: max --rows)")
    b.add_argument("--workers", type=int, default=2, help="image_workers of the pipeline run (vs 0)")
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--image-size", default="640x480", help="WxH of the JPEGs")
    b.add_argument("--max-new-tokens", type=int, default=3, help="answer cap (VQA answers: 1-3 tokens); 0: the task's")
    b.add_argument("--threads", type=int, default=1, help="torch threads of each lmms-eval run (OMP_NUM_THREADS)")
    b.add_argument("--inline-max-rows", type=int, default=10**9, help="run image_workers=0 only up to this many rows")
    b.add_argument("--out", default="bench_results", help="folder for the JSON and PNG")
    b.add_argument("--work", default=None, help="folder for the data, model and runs (default: OUT/scale_work)")
    b.set_defaults(device="cpu", dtype="float32")


def _peer_parser(bench) -> None:
    b = bench.add_parser("peer", help="CPU prefill / decode vs the official rwkv package on the same weights")
    b.add_argument("--size", default="small,1b6", help=f"comma-separated shapes among {', '.join(SIZES)}")
    b.add_argument("--checkpoint", default=None, help="an x060 .pth (plain RWKV-LM or VisualRWKV) instead of random")
    b.add_argument("--prompt", type=int, default=640, help="prefill length")
    b.add_argument("--steps", type=int, default=8, help="decode steps timed per repetition")
    b.add_argument("--reps", type=int, default=2, help="interleaved repetitions")
    b.add_argument("--threads", type=int, default=None, help="torch threads for both engines (default: torch's)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default="bench_results", help="folder for the JSON and PNG")
    b.set_defaults(device="cpu", dtype="float32")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="visualrwkv-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-tiny", help="write a random-weight VisualRWKV (model.pth + vision_tower/)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.set_defaults(func=_make_tiny)
    p = sub.add_parser("tasks", help="write the mini benchmarks and the task YAMLs (mini and paper protocol)")
    p.add_argument("out", help="output folder (data/ and tasks/ go there)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tasks)
    p = sub.add_parser("demo", help="lmms-eval on all eight mini benchmarks with a random tiny model, offline")
    p.add_argument("out", help="output folder (tiny model, data, task YAMLs, results)")
    p.add_argument("--batch_size", type=int, default=8)
    p.set_defaults(func=_demo)
    p = sub.add_parser("bench", help="performance: length, eval or roofline (JSON + PNG)")
    bench = p.add_subparsers(dest="what", required=True)
    for name, text in (("length", "decode latency and memory against inference length, vs a Transformer"),
                       ("eval", "samples/s on a GQA-like workload, vs the reference protocol"),
                       ("roofline", "decode / prefill against the device's bandwidth / matmul bounds")):  # fmt: skip
        b = bench.add_parser(name, help=text)
        b.add_argument("--size", default="small", choices=list(SIZES), help="random weights of this shape")
        b.add_argument("--device", default=None, help="default: cuda if available, else cpu")
        b.add_argument(
            "--dtype", default=None, choices=["bfloat16", "float16", "float32"], help="default: bf16 on CUDA"
        )
        b.add_argument("--kernel", default="auto", choices=["auto", "cupy", "torch"])
        b.add_argument("--out", default="bench_results", help="folder for the JSON and PNG")
        if name == "length":
            b.add_argument("--lengths", default=None, help="comma-separated; default 1K..24K on CUDA, 1K..8K on CPU")
            b.add_argument("--steps", type=int, default=16, help="decode steps timed at each length")
        elif name == "eval":
            b.add_argument("--samples", type=int, default=24)
            b.add_argument("--batch-sizes", default="8", help="comma-separated batch sizes to try")
        else:
            b.add_argument("--prompt", type=int, default=640, help="prefill length")
            b.add_argument("--steps", type=int, default=16, help="decode steps timed")
    _scale_parser(bench)
    _peer_parser(bench)
    p.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
