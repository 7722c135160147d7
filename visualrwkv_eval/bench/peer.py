"""bench peer: this project side by side with the official `rwkv` package (strategy "cpu fp32") on the same
random x060 checkpoint, in one process and so on the same torch threads.

Per size: prefill of a PROMPT-token prompt (tokens/s, last row's logits only, as both engines return them),
batch-1 decode (ms/token, each step timed for both engines back to back, fed the same token), the logit
difference between the engines on the shared prompt and on every decode step, and both decode rates as
fractions of the bandwidth bound (every weight read once per token, at the bandwidth measured in the same run,
as `bench roofline` does). Repetitions are interleaved, engine by engine, so that a noisy machine slows
both alike; the median is reported. Without the `rwkv` package the official engine is skipped with a message.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from functools import partial
from pathlib import Path

import torch

from visualrwkv_eval.measure import timed
from visualrwkv_eval.model import load_model
from visualrwkv_eval.model.tiny import SIZES, random_rwkv_weights, size_config

from . import SIZE_NAMES
from .common import environment, figure, save
from .roofline import bandwidth_bytes_per_s

OFFICIAL_STRATEGY = "cpu fp32"
CPU = torch.device("cpu")


def plain_checkpoint(path: Path, folder: Path) -> Path:
    """`path` itself if it is a plain RWKV-LM file, else its rwkv.* weights written as one (the official
    package reads only those)."""
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not any(k.startswith("rwkv.") for k in sd):
        return path
    out = folder / "rwkv-x060.pth"
    torch.save({k[5:]: v for k, v in sd.items() if k.startswith("rwkv.")}, out)
    return out


def random_checkpoint(size: str, seed: int, folder: Path) -> Path:
    """Real-shaped random x060 weights in fp32. (Not bf16: the official loader forms some parameters before
    its fp32 conversion, and on a bf16 file the engines then differ by 0.08 in the logits of the tiny shape,
    against 1e-5 on an fp32 file.)"""
    out = folder / f"rwkv-x060-{size}.pth"
    torch.save(random_rwkv_weights(size_config(size), seed), out)
    return out


def official_engine(path: Path):
    """The official RWKV on `path`, or (None, why) when the package is missing."""
    os.environ.setdefault("RWKV_JIT_ON", "1")  # its default: TorchScript on
    os.environ["RWKV_CUDA_ON"] = "0"
    os.environ.pop("RWKV_V7_ON", None)
    try:
        import rwkv.model as official
    except ImportError as e:
        why = f"the official engine is skipped: the rwkv package does not import ({e}); pip install rwkv"
        return None, {"skipped": why}
    from importlib.metadata import version

    engine = official.RWKV(model=str(path), strategy=OFFICIAL_STRATEGY, verbose=False)
    jit = official.MyModule is torch.jit.ScriptModule  # fixed when rwkv.model was first imported
    return engine, {"version": version("rwkv"), "strategy": OFFICIAL_STRATEGY, "jit": jit}


class Ours:
    def __init__(self, path: Path):
        self.model = load_model(str(path), dtype="float32", device="cpu")  # kernel auto: the C kernels

    def prefill(self, ids: list[int]):
        rows = self.model.embed_tokens(ids)
        (logits,), state = self.model.prefill([(rows, None)])
        return logits[-1], state

    def decode(self, token: int, state):
        return self.model.decode(torch.tensor([token]), state)[0], state


class Official:
    def __init__(self, engine):
        self.engine = engine

    @torch.inference_mode()
    def prefill(self, ids: list[int]):
        return self.engine.forward(ids, None)

    @torch.inference_mode()
    def decode(self, token: int, state):
        return self.engine.forward([token], state)


def measure(engines: dict, prompt: list[int], steps: int, reps: int) -> dict:
    """Interleaved repetitions: prefills back to back, then each decode step for every engine in turn; the
    engines take turns at going first (odd repetitions reverse the order)."""
    prefill = {name: [] for name in engines}
    decode = {name: [] for name in engines}
    diffs = {"prefill": [], "decode": [], "greedy_agree": []}
    for e in engines.values():  # warm-up (TorchScript optimises on its second call)
        for _ in range(2):
            _, state = e.prefill(prompt[:32])
            e.decode(prompt[0], state)
    for rep in range(reps):
        logits, states = {}, {}
        turns = list(engines.items())[:: -1 if rep % 2 else 1]
        for name, e in turns:
            t, (logits[name], states[name]) = timed(partial(e.prefill, prompt), CPU)
            prefill[name].append(t)
        record(diffs, "prefill", logits)
        spent = dict.fromkeys(engines, 0.0)
        for _ in range(steps):
            token = int(logits["ours"].argmax())
            for name, e in turns:
                t, (logits[name], states[name]) = timed(partial(e.decode, token, states[name]), CPU)
                spent[name] += t
            record(diffs, "decode", logits)
        for name in engines:
            decode[name].append(spent[name] / steps)
    return {"prefill_s": prefill, "decode_s_per_token": decode, "diffs": diffs}


def record(diffs: dict, phase: str, logits: dict) -> None:
    if "official" in logits:
        ours, official = logits["ours"].float(), logits["official"].float()
        diffs[phase].append((ours - official).abs().max().item())
        diffs["greedy_agree"].append(bool(ours.argmax() == official.argmax()))


def summary(raw: dict, prompt_tokens: int, bound_tokens_per_s: float) -> dict:
    out = {}
    for name in raw["prefill_s"]:
        p, d = statistics.median(raw["prefill_s"][name]), statistics.median(raw["decode_s_per_token"][name])
        out[name] = {
            "prefill_tokens_per_s": prompt_tokens / p,
            "decode_ms_per_token": 1e3 * d,
            "decode_fraction_of_bandwidth_bound": (1 / d) / bound_tokens_per_s,
            "prefill_s_per_rep": raw["prefill_s"][name],
            "decode_s_per_token_per_rep": raw["decode_s_per_token"][name],
        }
    return out


def run_size(args: argparse.Namespace, size: str, folder: Path, bandwidth: float) -> Path:
    path = Path(args.checkpoint) if args.checkpoint else random_checkpoint(size, args.seed, folder)
    load_before = os.getloadavg()
    ours = Ours(path)
    official, info = official_engine(plain_checkpoint(path, folder))
    engines = {"ours": ours} if official is None else {"ours": ours, "official": Official(official)}
    if official is None:
        print(info["skipped"])
    cfg = ours.model.config
    lm_params = sum(p.numel() for p in ours.model.rwkv.parameters())
    read_per_token = (lm_params - cfg.vocab_size * cfg.n_embd + cfg.n_embd) * 4  # fp32, one embedding row
    prompt = torch.randint(1, 65530, (args.prompt,), generator=torch.Generator().manual_seed(args.seed)).tolist()
    raw = measure(engines, prompt, args.steps, args.reps)
    results = summary(raw, args.prompt, bandwidth / read_per_token)
    result = {
        "benchmark": "peer",
        **environment(torch.device("cpu"), torch.float32),
        "size": size,
        "checkpoint": str(args.checkpoint) if args.checkpoint else f"random x060 weights (fp32), seed {args.seed}",
        "threads": torch.get_num_threads(),
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "prompt_tokens": args.prompt,
        "decode_steps_per_rep": args.steps,
        "reps": args.reps,
        "measured_bandwidth_gb_per_s": bandwidth / 1e9,
        "decode_bound_ms_per_token": 1e3 * read_per_token / bandwidth,
        "official_package": info,
        "engines": results,
    }
    if official is not None:
        d = raw["diffs"]
        o, f = results["ours"], results["official"]
        result["ratios"] = {
            "prefill_ours_over_official": o["prefill_tokens_per_s"] / f["prefill_tokens_per_s"],
            "decode_speed_ours_over_official": f["decode_ms_per_token"] / o["decode_ms_per_token"],
        }
        result["logits"] = {
            "prefill_max_abs_diff": max(d["prefill"]),
            "decode_max_abs_diff": max(d["decode"]),
            "same_argmax_every_step": all(d["greedy_agree"]),
        }
    out = Path(args.out)
    json_path = save(result, out, f"peer_{size}")
    plot(result, out / f"peer_{size}.png")
    print(report(result) + f"  -> {json_path}")
    return json_path


def report(r: dict) -> str:
    e = r["engines"]
    line = (
        f"{r['size']} ({r['threads']} threads): ours prefill {e['ours']['prefill_tokens_per_s']:.0f} tokens/s, "
        f"decode {e['ours']['decode_ms_per_token']:.1f} ms/token"
    )
    if "ratios" in r:
        q = r["ratios"]
        line += (
            f"; official {e['official']['prefill_tokens_per_s']:.0f} tokens/s, "
            f"{e['official']['decode_ms_per_token']:.1f} ms/token; ours/official: prefill "
            f"{q['prefill_ours_over_official']:.2f}x, decode {q['decode_speed_ours_over_official']:.2f}x; "
            f"max |logit diff| {max(r['logits']['prefill_max_abs_diff'], r['logits']['decode_max_abs_diff']):.1e}"
        )
    return line


def plot(r: dict, path: Path) -> None:
    plt = figure()
    names = list(r["engines"])
    labels = ["this project" if n == "ours" else "official rwkv" for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, key, title in (
        (axes[0], "prefill_tokens_per_s", f"prefill, {r['prompt_tokens']} tokens (tokens/s)"),
        (axes[1], "decode_ms_per_token", "batch-1 decode (ms/token, lower is better)"),
    ):
        ax.bar(labels, [r["engines"][n][key] for n in names], color=["tab:blue", "tab:gray"][: len(names)])
        ax.set_title(title, fontsize=9)
    axes[1].axhline(r["decode_bound_ms_per_token"], color="tab:red", ls="--", lw=1, label="bandwidth bound")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{r['size']}, fp32, {r['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    b = parser.add_argument
    b("--size", default="small,1b6", help=f"comma-separated shapes among {', '.join(SIZE_NAMES)}")
    b("--checkpoint", default=None, help="an x060 .pth (plain RWKV-LM or VisualRWKV) instead of random")
    b("--prompt", type=int, default=640, help="prefill length")
    b("--steps", type=int, default=8, help="decode steps timed per repetition")
    b("--reps", type=int, default=2, help="interleaved repetitions")
    b("--threads", type=int, default=None, help="torch threads for both engines (default: torch's)")
    b("--seed", type=int, default=0)
    b("--out", default="bench_results", help="folder for the JSON and PNG")


@torch.inference_mode()
def run(args: argparse.Namespace) -> list[Path]:
    """Both engines in fp32 on the CPU (the official package's CPU path)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [Path(args.checkpoint).stem] if args.checkpoint else args.size.split(",")
    if unknown := [s for s in sizes if s not in SIZES and not args.checkpoint]:
        raise SystemExit(f"--size {','.join(unknown)}: expected among {', '.join(SIZES)}")
    bandwidth = bandwidth_bytes_per_s(CPU)
    with tempfile.TemporaryDirectory(prefix="peer-") as folder:
        return [run_size(args, size, Path(folder), bandwidth) for size in sizes]
