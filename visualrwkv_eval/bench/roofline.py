"""bench roofline: batch-1 decode as a fraction of the memory-bandwidth bound (every weight read once per
token) and prefill as a fraction of the matmul bound (2 FLOP per weight per token for the blocks, and the head once,
for the one row whose logits a prefill returns), against the device's own bandwidth and matmul rate measured in the
same run."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from visualrwkv_eval.measure import seconds

from .common import add_model_arguments, bar_chart, device_and_dtype, environment, model_family, random_model_of, save


def fastest(fn, device: torch.device, reps: int) -> float:
    """The fastest of `reps` single timings: a bound is what the device can do, and other load only slows."""
    return min(seconds(fn, device, reps=1, warmup=1 if i == 0 else 0) for i in range(reps))


def bandwidth_bytes_per_s(device: torch.device) -> float:
    """The device's memory bandwidth: a large copy (bytes read plus bytes written, per second); on a CPU the faster
    of that and a one-row product over a 1 GiB row-major matrix (bytes read), as a CPU copy also pays for reading
    the destination lines it writes (write-allocate) and decoding only reads. The source is filled first: an
    untouched CPU allocation maps the shared zero page, whose reads hit the cache (a copy from one measured 32 GB/s
    here, against 26 GB/s from written memory and 29-31 GB/s for the product)."""
    n = (2 << 30 if device.type == "cuda" else 256 << 20) // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    rate = 2 * src.numel() * 4 / fastest(lambda: dst.copy_(src), device, reps=10)
    if device.type == "cpu":
        del src, dst
        x, w = torch.ones(1, 1024), torch.ones(1024, (1 << 30) // 4 // 1024)
        rate = max(rate, w.numel() * 4 / fastest(lambda: x @ w, device, reps=5))
    return rate


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / fastest(lambda: a @ b, device, reps=10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, padding="once")  # the language model's own recurrence
    parser.add_argument("--prompt", type=int, default=640, help="prefill length")
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed")


@torch.inference_mode()
def run(args: argparse.Namespace) -> Path:
    device, dtype = device_and_dtype(args)
    bandwidth, flops = bandwidth_bytes_per_s(device), matmul_flops_per_s(device, dtype)
    family, label = model_family(args)
    model = random_model_of(args, device, dtype)
    cfg = model.config
    lm_params = sum(p.numel() for p in model.rwkv.parameters())
    embedding = cfg.vocab_size * cfg.n_embd
    read_per_token = (lm_params - embedding + cfg.n_embd) * dtype.itemsize  # one embedding row, every other weight
    # the head (as large as the embedding) runs on the last row only
    flop_per_token = 2 * (lm_params - 2 * embedding) + 2 * embedding / args.prompt
    ids = torch.randint(1, 65530, (args.prompt,), generator=torch.Generator().manual_seed(0)).to(device)
    rows = model.embed_tokens(ids)
    prefill = seconds(lambda: model.prefill([(rows, None)]), device, reps=5, warmup=1)
    (logits,), state = model.prefill([(rows, None)])
    token = logits.argmax(-1)
    decode = seconds(lambda: model.decode(token, state), device, reps=args.steps, warmup=3)
    decode_bound, prefill_bound = bandwidth / read_per_token, flops / flop_per_token
    result = {
        "benchmark": "roofline",
        **environment(device, dtype),
        "size": args.size,
        "family": family,
        **({"padding": model.padding} if family == "v7" else {}),
        "kernel": model.backend,
        "language_model_parameters": lm_params,
        "measured_bandwidth_gb_per_s": bandwidth / 1e9,
        "measured_matmul_tflop_per_s": flops / 1e12,
        "decode": {
            "batch": 1,
            "tokens_per_s": 1 / decode,
            "bytes_per_token": read_per_token,
            "bound_tokens_per_s": decode_bound,
            "fraction_of_bound": (1 / decode) / decode_bound,
        },
        "prefill": {
            "prompt_tokens": args.prompt,
            "tokens_per_s": args.prompt / prefill,
            "flop_per_token": flop_per_token,
            "bound_tokens_per_s": prefill_bound,
            "fraction_of_bound": (args.prompt / prefill) / prefill_bound,
        },
    }
    out = Path(args.out)
    path = save(result, out, f"roofline_{label}")
    labels = ["decode (batch 1)", f"prefill ({args.prompt} tokens)"]
    values = [result["decode"]["fraction_of_bound"], result["prefill"]["fraction_of_bound"]]
    title = f"{label}, {result['dtype']}, {result['device']}"
    bar_chart(out / f"roofline_{label}.png", labels, values, "fraction of the roofline bound", title, top=1)
    print(f"decode {1 / decode:.1f} tokens/s = {result['decode']['fraction_of_bound']:.0%} of the bandwidth bound; "
          f"prefill {args.prompt / prefill:.0f} tokens/s = {result['prefill']['fraction_of_bound']:.0%} of the matmul "
          f"bound  -> {path}")  # fmt: skip
    return path
