"""The VisualRWKV-7 vision tower (DINOv2-reg4 + SigLIP + SAM, random weights of the released shapes) on a GPU: output
shape, finiteness, time and peak memory for 4 images in bf16, and the bf16 features' relative error against the
same tower in fp32, per encoder. `--tiny` runs the tiny geometry on the CPU (a dry run of this script).

    python scripts/gpu_vision7.py --out OUT/vision7_tower.json          # scripts/gpu_bench.sh runs it
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from visualrwkv_eval.model.siglip_dino_sam import SigLIPDinoSAMTower
from visualrwkv_eval.model.vision7_weights import RELEASE, TINY, random_tower_state


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    geometry, device = (TINY, "cpu") if args.tiny else (RELEASE, "cuda")
    weights = random_tower_state(geometry, seed=0, dtype=torch.bfloat16)
    images = [Image.radial_gradient("L").convert("RGB").resize((640, 480)),
              Image.linear_gradient("L").convert("RGB")] * 2  # fmt: skip
    tower = SigLIPDinoSAMTower.from_vit_state(weights).to(device)
    pixels = tower.preprocess(images)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tower(pixels)  # warm-up: cuBLAS / SDPA kernel selection
    sync(device)
    t0 = time.perf_counter()
    feats = tower(pixels)
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    del tower
    ref = SigLIPDinoSAMTower.from_vit_state(weights, dtype=torch.float32).to(device)(pixels)
    d, s = geometry.dino.hidden, geometry.dino.hidden + geometry.siglip.hidden
    spans = {"dino": (0, d), "siglip": (d, s), "sam": (s, geometry.hidden_size)}
    rel = {
        k: ((feats[..., a:b].float() - ref[..., a:b]).norm() / ref[..., a:b].norm()).item()
        for k, (a, b) in spans.items()
    }
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "images": len(images),
              "shape": list(feats.shape), "dtype": str(feats.dtype), "finite": bool(torch.isfinite(feats).all()),
              "ms_for_all_images": seconds * 1e3, "peak_gib": peak, "bf16_vs_fp32_rel_err": rel}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
