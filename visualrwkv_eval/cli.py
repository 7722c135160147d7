"""The `visualrwkv-eval` command line: make-tiny, tasks, demo, bench.

Each subcommand imports what it needs when it runs, so that `visualrwkv-eval --help` (and building the parser)
does not import torch or transformers, which take seconds."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from visualrwkv_eval.bench import ALL_SIZE_NAMES, FAMILY_SIZES

MINI_NOTE = (
    "The demo model has random weights: its scores are meaningless. The run proves the pipeline (model, "
    "lmms-eval's task code for all eight benchmarks, metrics, sample logs, submission files)."
)


def _make_tiny(args: argparse.Namespace) -> None:
    from visualrwkv_eval.model.tiny import make_tiny

    if args.size not in FAMILY_SIZES[args.family]:
        sys.exit(f"make-tiny --family {args.family}: --size {args.size} is not one of its sizes "
                 f"({', '.join(FAMILY_SIZES[args.family])})")  # fmt: skip
    out = make_tiny(args.out, seed=args.seed, size=args.size, family=args.family)
    folder = f" and {out / 'vision_tower'}" if args.family == "v6" else " (vision towers in its vit.* keys)"
    print(f"wrote {out / 'model.pth'}{folder}")


def _tasks(args: argparse.Namespace) -> None:
    from visualrwkv_eval.tasks import prepare_mini

    tasks = prepare_mini(args.out, seed=args.seed)
    print(f"mini benchmarks in {Path(args.out) / 'data'}; task YAMLs in {tasks}")
    print(f"run them with: lmms-eval --include_path {tasks} --tasks visualrwkv_mini (or visualrwkv_paper, "
          "visualrwkv7_paper) ...")  # fmt: skip


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
    vision_tower: Path | None,
    tasks: str,
    output_path: Path,
    *extra: str,
    include_path: Path | None = None,
    model_args: str = "",
    launcher: tuple[str, ...] = (sys.executable,),
) -> list[str]:
    """The lmms-eval command line for model `visualrwkv` (the demo, the benchmarks and the tests share it).
    `model_args` is appended to pretrained and vision_tower (",dtype=float32,..."); `vision_tower` None: not
    passed (a VisualRWKV-7 file holds its towers); `launcher` may be torchrun."""
    include = ["--include_path", str(include_path)] if include_path is not None else []
    tower = "" if vision_tower is None else f",vision_tower={vision_tower}"
    return [*launcher, "-m", "lmms_eval", "--model", "visualrwkv",
            "--model_args", f"pretrained={pretrained}{tower}{model_args}",
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
    v7 = args.family == "v7"  # the tiny VisualRWKV-7 (its towers in the file) beside the v6 demo's files
    tiny = out / ("tiny_v7" if v7 else "tiny")
    if not (tiny / "model.pth").is_file():
        make_tiny(tiny, seed=0, family=args.family)
    tasks = prepare_mini(out, seed=0)
    results = out / ("results_v7" if v7 else "results")
    cmd = lmms_eval_command(
        tiny / "model.pth", None if v7 else tiny / "vision_tower", MINI_GROUP, results, "--batch_size",
        str(args.batch_size), "--log_samples", include_path=tasks, model_args=",dtype=float32",
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
    from visualrwkv_eval.bench import load

    load(args.what).run(args)


def _mini_tasks(tasks: Path) -> list[str]:
    import yaml

    return yaml.safe_load((tasks / "mini" / "_visualrwkv_mini.yaml").read_text())["task"]


def build_parser(benchmarks: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The command line, with the options of `benchmarks` (default: all). Each benchmark's options come from its
    module, and importing it imports torch (and more): the others are listed without their options."""
    from visualrwkv_eval.bench import BENCHMARKS, load

    parser = argparse.ArgumentParser(prog="visualrwkv-eval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-tiny", help="write a random-weight VisualRWKV (model.pth + vision_tower/)")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", default="v6", choices=tuple(FAMILY_SIZES), help="VisualRWKV-6 or VisualRWKV-7")
    p.add_argument(
        "--size", default="tiny", choices=ALL_SIZE_NAMES, help="v6: tiny|small|1b6|3b|7b; v7: tiny|0b1|0b4|1b5"
    )
    p.set_defaults(func=_make_tiny)
    p = sub.add_parser("tasks", help="write the mini benchmarks and the task YAMLs (mini and paper protocol)")
    p.add_argument("out", help="output folder (data/ and tasks/ go there)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tasks)
    p = sub.add_parser("demo", help="lmms-eval on all eight mini benchmarks with a random tiny model, offline")
    p.add_argument("out", help="output folder (tiny model, data, task YAMLs, results)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--family", default="v6", choices=("v6", "v7"), help="a tiny VisualRWKV-6 (default) or -7")
    p.set_defaults(func=_demo)
    p = sub.add_parser("bench", help=f"performance measurements, JSON + PNG: {', '.join(BENCHMARKS)}")
    p.set_defaults(func=_bench)
    bench = p.add_subparsers(dest="what", required=True)
    for name, (_module, text) in BENCHMARKS.items():
        b = bench.add_parser(name, help=text)
        if benchmarks is None or name in benchmarks:
            load(name).add_arguments(b)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # only the benchmark that runs is imported (the kernel benchmark runs where transformers is missing)
    parser = build_parser(tuple(argv[1:2]) if argv[:1] == ["bench"] and argv[1:2] != ["--help"] else ())
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
