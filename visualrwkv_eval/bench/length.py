"""bench length: per-token decode latency and peak memory against inference length, VisualRWKV against a
LLaVA-1.5-shaped Transformer of matching size (Llama architecture, SDPA attention, KV cache), one run.

A Transformer reads its whole KV cache for every new token; VisualRWKV reads a constant recurrent state.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import torch
from tqdm import tqdm

from visualrwkv_eval.measure import peak_memory_gib, peak_memory_reset, seconds

from .common import add_model_arguments, device_and_dtype, environment, figure, model_family, random_model_of, save

# LLaVA-1.5's language model is Vicuna, a Llama-2 (multi-head attention); "7b" is exactly Llama-2-7B and the
# others keep its proportions at the parameter count of the VisualRWKV size they stand beside
BASELINES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, intermediate_size=448),
    "small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048),
    "1b6": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, intermediate_size=5632),
    "3b": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=20, intermediate_size=6912),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008),
    # VisualRWKV-7: a layer of RWKV-7 holds ~12 C^2 weights (r, k, v, o and the 4C channel mix), as a Llama layer
    # of the same width with an MLP of 2.6875 C does, so the Transformer keeps the depth and width
    "tiny_v7": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=344),
    "0b1": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2064),
    "0b4": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=2752),
    "1b5": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=5504),
}


def llava_baseline(label: str, dtype: torch.dtype, device: torch.device, max_length: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**BASELINES[label], vocab_size=32000, max_position_embeddings=max(4096, max_length + 64))
    config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype: a 7B model never sits in fp32
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def tensor_peak_gib(device: torch.device) -> float | None:
    """Peak tensor memory of one point on CUDA; None on the CPU, where the only gauge is the process's resident
    set, which keeps what the allocator held from the model measured before (the plot then shows state sizes)."""
    return peak_memory_gib(device) if device.type == "cuda" else None


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_mib(state) -> float:
    """Memory one sequence's state holds: the recurrent state; with VisualRWKV-7's exact left padding
    (model/left_pad.py) the pad chains it has made so far and the rows it keeps to start new ones (it grows with
    the length, like a KV cache of one row per token instead of two per layer)."""
    seqs = getattr(state, "seqs", None)
    if seqs is None:
        return state.bytes_per_sequence / 2**20
    chains = sum(c.state.bytes_per_sequence for seq in seqs for c in seq.chains.values())
    rows = sum(p.nbytes for seq in seqs for p in seq.parts)
    return (chains + rows) / len(seqs) / 2**20


@torch.inference_mode()
def rwkv_point(model, length: int, steps: int, device: torch.device) -> dict:
    ids = torch.randint(1, 65530, (length,), generator=torch.Generator().manual_seed(length))
    peak_memory_reset(device)
    (logits,), state = model.prefill([(model.embed_tokens(ids), None)])
    token = logits.argmax(-1)
    latency = seconds(lambda: model.decode(token, state), device, reps=steps, warmup=3)
    return {
        "latency_ms": 1000 * latency,
        "peak_memory_gib": tensor_peak_gib(device),
        "state_mib": state_mib(state),
    }


@torch.inference_mode()
def transformer_point(model, length: int, steps: int, device: torch.device) -> dict:
    ids = torch.randint(1, 32000, (1, length), generator=torch.Generator().manual_seed(length)).to(device)
    peak_memory_reset(device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    # transformers 5 renamed past_key_values to cache
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache, token = out[key], out.logits[:, -1:].argmax(-1)

    def step():
        model(input_ids=token, use_cache=True, **{key: cache})  # the cache grows by one token per step

    latency = seconds(step, device, reps=steps, warmup=3)
    cfg = model.config
    return {
        "latency_ms": 1000 * latency,
        "peak_memory_gib": tensor_peak_gib(device),
        "state_mib": 2 * cfg.num_hidden_layers * length * cfg.hidden_size * model.dtype.itemsize / 2**20,
    }


def measure(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    lengths = [int(x) for x in args.lengths.split(",")]
    curves = {}
    family, label = model_family(args)
    rwkv = random_model_of(args, device, dtype)
    rwkv_params = params(rwkv.rwkv) + params(rwkv.proj)
    padding = {"padding": rwkv.padding} if family == "v7" else {}
    curves["visualrwkv"] = [rwkv_point(rwkv, n, args.steps, device) for n in tqdm(lengths, desc="VisualRWKV")]
    del rwkv
    llama = llava_baseline(label, dtype, device, max(lengths))
    llama_params = params(llama)
    curves["transformer"] = [transformer_point(llama, n, args.steps, device) for n in tqdm(lengths, desc="Transformer")]
    del llama
    ratios = []
    for n, r, t in zip(lengths, curves["visualrwkv"], curves["transformer"]):
        mem = None
        if r["peak_memory_gib"] is not None:
            mem = 1 - r["peak_memory_gib"] / t["peak_memory_gib"]
        ratios.append({"length": n, "speedup": t["latency_ms"] / r["latency_ms"], "memory_saving": mem})
    return {
        "size": args.size,
        "family": family,
        **padding,
        "lengths": lengths,
        "decode_steps_timed": args.steps,
        "visualrwkv": {"language_model_parameters": rwkv_params, "points": curves["visualrwkv"]},
        "transformer": {
            "architecture": "Llama (LLaVA-1.5 LM shape), SDPA, KV cache",
            "config": BASELINES[label],
            "parameters": llama_params,
            "points": curves["transformer"],
        },
        "ratios": ratios,
        "visualrwkv_flatness": curves["visualrwkv"][-1]["latency_ms"] / curves["visualrwkv"][0]["latency_ms"],
        "transformer_growth": curves["transformer"][-1]["latency_ms"] / curves["transformer"][0]["latency_ms"],
    }


def plot(result: dict, path: Path) -> None:
    plt = figure()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    lengths = result["lengths"]
    mem_key = "peak_memory_gib" if result["visualrwkv"]["points"][0]["peak_memory_gib"] is not None else "state_mib"
    for name, label in (("visualrwkv", "VisualRWKV"), ("transformer", "Transformer (LLaVA-1.5 shape)")):
        points = result[name]["points"]
        ax1.plot(lengths, [p["latency_ms"] for p in points], marker="o", label=label)
        ax2.plot(lengths, [p[mem_key] for p in points], marker="o", label=label)
    mem_label = {"peak_memory_gib": "peak memory (GiB)", "state_mib": "KV cache / recurrent state (MiB)"}[mem_key]
    for ax, ylabel in ((ax1, "decode latency per token (ms)"), (ax2, mem_label)):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("inference length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{result['size']} ({result['family']}), {result['dtype']}, {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, padding="once")  # the language model's own recurrence
    parser.add_argument("--lengths", default=None, help="comma-separated; default 1K..24K on CUDA, 1K..8K on CPU")
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed at each length")


def run(args: argparse.Namespace) -> Path:
    device, dtype = device_and_dtype(args)
    if args.lengths is None:
        args.lengths = "1024,2048,4096,8192,16384,24576" if device.type == "cuda" else "1024,2048,4096,8192"
    result = {"benchmark": "length", **environment(device, dtype), **measure(args, device, dtype)}
    out = Path(args.out)
    label = model_family(args)[1]
    path = save(result, out, f"length_{label}")
    plot(result, out / f"length_{label}.png")
    for r in result["ratios"]:
        mem = "" if r["memory_saving"] is None else f", {100 * r['memory_saving']:.0f}% less peak memory"
        print(f"{r['length']:>6} tokens: VisualRWKV decodes {r['speedup']:.2f}x faster per token{mem}")
    print(f"VisualRWKV latency {result['lengths'][-1]}/{result['lengths'][0]}: {result['visualrwkv_flatness']:.2f}; "
          f"Transformer: {result['transformer_growth']:.2f}  -> {path}")  # fmt: skip
    return path
