"""The `visualrwkv-eval` command line: make-tiny, tasks, demo."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

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
    cmd = [
        sys.executable, "-m", "lmms_eval", "--model", "visualrwkv",
        "--model_args", f"pretrained={tiny / 'model.pth'},vision_tower={tiny / 'vision_tower'},dtype=float32",
        "--tasks", MINI_GROUP, "--include_path", str(tasks), "--batch_size", str(args.batch_size),
        "--log_samples", "--output_path", str(results), "--process_docs_parallel", "1",
    ]  # fmt: skip
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=offline_env(out))
    # lmms-eval exits 0 even when the evaluation failed: check what it wrote
    path = results_file(results)
    written = json.loads(path.read_text())["results"]
    missing = [t for t in _mini_tasks(tasks) if t not in written]
    if missing:
        sys.exit(f"lmms-eval produced no results for {', '.join(missing)}; see the log above")
    print(f"\nresults: {path}\nsamples: {path.parent}\n{MINI_NOTE}")


def _mini_tasks(tasks: Path) -> list[str]:
    import yaml

    return yaml.safe_load((tasks / "mini" / "_visualrwkv_mini.yaml").read_text())["task"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="visualrwkv-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-tiny", help="write a random-weight VisualRWKV (model.pth + vision_tower/)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="tiny", choices=["tiny", "1b6", "3b", "7b"])
    p.set_defaults(func=_make_tiny)
    p = sub.add_parser("tasks", help="write the mini benchmarks and the task YAMLs (mini and paper protocol)")
    p.add_argument("out", help="output folder (data/ and tasks/ go there)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tasks)
    p = sub.add_parser("demo", help="lmms-eval on all eight mini benchmarks with a random tiny model, offline")
    p.add_argument("out", help="output folder (tiny model, data, task YAMLs, results)")
    p.add_argument("--batch_size", type=int, default=8)
    p.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
