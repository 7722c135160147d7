"""bench pipeline: the image pipeline on a GPU: samples/s of the adapter's loop (Prefetcher feeding
generate_batch) with 0 vs N image workers, and the share of wall time the model computes (how busy the device is
kept). No lmms-eval: the GPU machines lack it, so JPEG bytes stand in for doc_to_visual (decode + CLIP
preprocessing per request, as the adapter's workers do). Answers are checked to be identical for every worker
count.

    visualrwkv-eval bench pipeline --sizes tiny,small --out bench_results   # writes gpu_pipeline.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from visualrwkv_eval.measure import synchronize

from .common import environment, save
from .scale import _jpeg

QUESTION = "Is there a circle in the image?\nAnswer the question using a single word or phrase."


def jpeg(seed: int) -> bytes:
    return _jpeg(random.Random(seed), (640, 480))


def loop(model, jpegs: list[bytes], rows: int, batch: int, workers: int) -> dict:
    """The adapter's request loop over `rows` requests: images prepared by `workers` processes (0: inline)."""
    from visualrwkv_eval.model import GenerationRequest, generate_batch
    from visualrwkv_eval.pipeline import Prefetcher

    def prepare(i: int) -> torch.Tensor:
        return model.preprocess([Image.open(io.BytesIO(jpegs[i % len(jpegs)])).convert("RGB")])

    batches = [list(range(s, min(rows, s + batch))) for s in range(0, rows, batch)]
    answers, busy = [], 0.0
    start = time.perf_counter()
    for _batch, pixels in Prefetcher(prepare, workers).run(batches):
        t = time.perf_counter()
        gens = generate_batch(model, [GenerationRequest(QUESTION, pixels=p, max_new_tokens=3) for p in pixels])
        synchronize(model.device)
        busy += time.perf_counter() - t
        answers += [g.text for g in gens]
    wall = time.perf_counter() - start
    return {"workers": workers, "samples_per_s": rows / wall, "model_share_of_wall": busy / wall, "answers": answers}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--rows", default="4096,1024", help="rows per size")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", default="0,4,8,0", help="image worker counts, in order (0 again: drift check)")
    parser.add_argument("--out", default="bench_results")
    parser.add_argument("--device", default="cuda")


def run(args: argparse.Namespace) -> Path:
    from visualrwkv_eval.model import load_model
    from visualrwkv_eval.model.tiny import make_tiny

    device = torch.device(args.device)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        jpegs = list(pool.map(jpeg, range(512)))
    result = {"benchmark": "gpu_pipeline", **environment(device, torch.bfloat16), "cpu_count": os.cpu_count(),
              "batch": args.batch, "image": "640x480 JPEG, 512 distinct", "runs": []}  # fmt: skip
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for size, rows in zip(args.sizes.split(","), map(int, args.rows.split(","))):
            folder = make_tiny(Path(tmp) / size, seed=0, size=size)
            model = load_model(str(folder / "model.pth"), str(folder / "vision_tower"), "bfloat16", device)
            loop(model, jpegs, args.batch * 2, args.batch, 0)  # warm-up: kernels compiled, allocator primed
            reference = None
            for workers in map(int, args.workers.split(",")):
                r = loop(model, jpegs, rows, args.batch, workers)
                answers = r.pop("answers")
                same = reference is None or answers == reference
                reference = reference or answers
                result["runs"].append({"size": size, "rows": rows, **r, "answers_same_as_first": same})
                print(json.dumps(result["runs"][-1]), flush=True)
                path = save(result, out, "gpu_pipeline")
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return path
