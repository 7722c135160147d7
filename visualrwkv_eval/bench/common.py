"""What every benchmark shares: the record of the machine it ran on, JSON and plot output, the options of the
benchmarks that time a random-weight model, and the device / dtype those options name."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch

from . import ALL_SIZE_NAMES, FAMILY_SIZES, family_of


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return platform.machine()


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    """Device, dtype, date and versions: every result records them."""
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:  # the kernel benchmark runs without the evaluation stack
        transformers_version = None
    try:
        import cupy

        cupy_version = cupy.__version__
    except ImportError:
        cupy_version = None
    return {
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "transformers": transformers_version, "cupy": cupy_version},
    }


def add_model_arguments(parser: argparse.ArgumentParser, padding: str = "exact") -> None:
    """Options of the benchmarks that time a random-weight model of a released shape; `padding`: this
    benchmark's default for VisualRWKV-7's left padding."""
    parser.add_argument(
        "--size", default="small", choices=ALL_SIZE_NAMES,
        help="random weights of this shape: VisualRWKV-6 tiny|small|1b6|3b|7b, VisualRWKV-7 0b1|0b4|1b5",
    )  # fmt: skip
    parser.add_argument(
        "--family", default=None, choices=tuple(FAMILY_SIZES),
        help="default: the family of --size (v6 for tiny); --family v7 --size tiny is the tiny VisualRWKV-7",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--dtype", default=None, choices=["bfloat16", "float16", "float32"], help="default: bf16 on CUDA"
    )
    parser.add_argument("--kernel", default="auto", choices=["auto", "cupy", "torch"])
    parser.add_argument(
        "--padding", default=padding, choices=["exact", "once"],
        help=f"VisualRWKV-7's left pads (model_arg padding): exact = the reference's, recomputed for every token; "
        f"once = before the prompt, then plain recurrence (default here: {padding})",
    )  # fmt: skip
    parser.add_argument("--out", default="bench_results", help="folder for the JSON and PNG")


def model_family(args: argparse.Namespace) -> tuple[str, str]:
    """(family, label) of --size / --family: the label names the result files, e.g. "0b1", "tiny", "tiny_v7"."""
    family = family_of(args.size, args.family)
    return family, args.size if family == family_of(args.size) else f"{args.size}_{family}"


def random_model_of(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """The random-weight VisualRWKV (6 or 7) that --size / --family / --kernel name."""
    from visualrwkv_eval.model.tiny import random_model

    family = model_family(args)[0]
    options = {"padding": args.padding} if family == "v7" else {}
    return random_model(args.size, dtype=dtype, device=device, family=family, kernel=args.kernel, **options)


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """--device (default: cuda if available) and --dtype (default: bf16 on CUDA, fp32 elsewhere), as the model
    parses them."""
    from visualrwkv_eval.model.visualrwkv import parse_dtype

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return device, parse_dtype(args.dtype, device)


def tensor_mib(*tensors: torch.Tensor) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def save(result: dict, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(path: Path, labels: list[str], values: list[float], ylabel: str, title: str, top: float | None = None):
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(labels, values)
    ax.set_ylim(0, top)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
