"""bench eval: samples/s on a GQA-like workload (one image, a short question, answers of 1-3 tokens, the
family's prompt: the sandwich for VisualRWKV-6, image first for VisualRWKV-7), this project at batch 1 and
batched, against the reference protocol, which runs batch 1 and re-runs the whole sequence for every new token
(the reference evaluate.py; for VisualRWKV-7 with its left pads of token 261 to a multiple of 16, recomputed at
every step), in one run."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from visualrwkv_eval.measure import timed
from visualrwkv_eval.model import GenerationRequest, generate_batch
from visualrwkv_eval.model.tokenizer import STOP_TOKEN

from .common import add_model_arguments, bar_chart, device_and_dtype, environment, model_family, random_model_of, save

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def workload(n: int, image_size: int) -> list[GenerationRequest]:
    """GQA-like requests; answer i is 1 + i % 3 tokens, so each request predicts 2 + i % 3 next tokens (the
    last of which is where a real model emits the stop token)."""
    rng = random.Random(0)
    requests = []
    for i in range(n):
        image = Image.new("RGB", (image_size, image_size), rng.choice(COLOURS))
        margin = image_size // 8
        ImageDraw.Draw(image).ellipse(
            (margin, margin, image_size - margin, image_size - margin), fill=rng.choice(COLOURS)
        )
        question = f"What color is the {rng.choice(['circle', 'ball', 'disc'])}?\nAnswer the question using a single word or phrase."
        requests.append(GenerationRequest(question, image, max_new_tokens=2 + i % 3))
    return requests


@torch.inference_mode()
def reference_protocol(model, request: GenerationRequest) -> list[int]:
    """evaluate.py's loop: batch 1, and for every new token the whole sequence again from an empty state; for a
    left-padded family (VisualRWKV-7) after (-T) % 16 rows of token 261, T the sequence's length at that step
    (github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/src/model.py, RWKV.forward and VisualRWKV.generate)."""
    feats = model.encode_images([request.image])[0]
    rows, starts = model.embed(model.prompt(request.context, True), feats)
    pad = getattr(model, "pad", None)
    out = []
    for _ in range(request.max_new_tokens):
        if pad is None:
            (logits,), _ = model.prefill([(rows, starts)])
        else:
            p = pad.pads(rows.shape[0])
            padded = torch.cat([model.embed_tokens([pad.token] * p), rows])
            (logits,), _ = model.raw_prefill([(padded, [s + p for s in starts])])
        token = int(logits[0].argmax())
        if token == STOP_TOKEN:
            break
        out.append(token)
        rows = torch.cat([rows, model.embed_tokens([token])])
    return out


def image_side(model) -> int:
    """The side of the tower's input images (the workload draws images of that size)."""
    vision = model.vision
    return vision.clip.config.image_size if hasattr(vision, "clip") else vision.geometry.dino.image_size


def ours(model, requests, batch_size: int) -> list[list[int]]:
    out = []
    for start in range(0, len(requests), batch_size):
        out += [g.new_tokens for g in generate_batch(model, requests[start : start + batch_size])]
    return out


def agreement(tokens: list[list[int]], baseline: list[list[int]]) -> float:
    """Fraction of requests whose new tokens equal the baseline's."""
    return sum(a == b for a, b in zip(tokens, baseline)) / max(len(baseline), 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--batch-sizes", default="8", help="comma-separated batch sizes to try")


def run(args: argparse.Namespace) -> Path:
    """Measures and saves as it goes: the JSON exists (with what was measured and, on a failure, the error)
    before anything can fail. Answers are compared, not asserted: on CUDA, cuBLAS picks kernels by batch shape,
    so a bf16 greedy near-tie may flip between batch sizes (bitwise equal on CPU; see the README)."""
    device, dtype = device_and_dtype(args)
    family, label = model_family(args)
    out, name = Path(args.out), f"eval_{label}"
    result = {"benchmark": "eval", **environment(device, dtype), "size": args.size, "family": family}
    result["complete"] = False
    path = save(result, out, name)
    try:
        _measure(args, device, dtype, result, lambda: save(result, out, name))
    except BaseException as e:
        result["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        save(result, out, name)
    labels = ["reference protocol", "ours, batch 1", *[f"ours, batch {bs}" for bs in result["batched_samples_per_s"]]]
    values = [result["reference_protocol_samples_per_s"], result["batch_1_samples_per_s"],
              *result["batched_samples_per_s"].values()]  # fmt: skip
    title = f"GQA-like eval, {label}, {result['dtype']}, {result['device']}"
    bar_chart(out / f"{name}.png", labels, values, "samples / s", title)
    return path


def _measure(args, device, dtype, result: dict, checkpoint) -> None:
    model = random_model_of(args, device, dtype)
    result["kernel"] = model.backend
    if getattr(model, "pad", None) is not None:
        result["padding"] = model.padding
    requests = workload(args.samples, image_side(model))
    n = len(requests)
    prompt = "sandwich prompt" if model_family(args)[0] == "v6" else "image-first prompt"
    result |= {
        "samples": n,
        "workload": f"one image, a short question, {prompt}, answers of 1-3 tokens (+ the stop prediction)",
    }
    ours(model, requests[:2], 2)  # warm-up: kernels, allocator
    t_ref, ref_tokens = timed(lambda: [reference_protocol(model, r) for r in tqdm(requests, desc="reference")], device)
    result["reference_protocol_samples_per_s"] = n / t_ref
    checkpoint()
    t_b1, b1_tokens = timed(lambda: ours(model, requests, 1), device)
    result |= {
        "batch_1_samples_per_s": n / t_b1,
        "speedup_batch_1": t_ref / t_b1,
        "answers_match_reference": ref_tokens == b1_tokens,
        "reference_agreement": agreement(b1_tokens, ref_tokens),
        "batched_samples_per_s": {},
        "batch_agreement": {},  # fraction of answers equal to batch 1's, per batch size
    }
    checkpoint()
    batched = {}
    for bs in tqdm([int(b) for b in args.batch_sizes.split(",")], desc="batch sizes"):
        batched[bs], tokens = timed(lambda bs=bs: ours(model, requests, bs), device)
        result["batched_samples_per_s"][str(bs)] = n / batched[bs]
        result["batch_agreement"][str(bs)] = agreement(tokens, b1_tokens)
        checkpoint()
    best = min(batched, key=batched.get)
    result |= {"best_batch_size": best, "speedup_best": t_ref / batched[best], "complete": True}
    print(f"samples/s: reference protocol {n / t_ref:.2f}, ours batch 1 {n / t_b1:.2f} ({t_ref / t_b1:.1f}x), "
          f"batch {best} {n / batched[best]:.2f} ({t_ref / batched[best]:.1f}x); answers match the reference: "
          f"{result['reference_agreement']:.0%}, batch 1: {result['batch_agreement']}")  # fmt: skip
