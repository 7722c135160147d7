"""VisualRWKV-7 tower weights from the encoders' own files, for a checkpoint that carries no `vit.*` tensors.

The reference (github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/src/config.py) builds its towers from three
files under `--vision_tower_dir`, then lets the checkpoint's `vit.*` tensors override them. Here the model_arg
`vision_tower` names either
- a folder laid out like that directory: `timm/vit_large_patch14_reg4_dinov2.lvd142m/`,
  `timm/ViT-SO400M-14-SigLIP-384/` and `facebook/sam-vit-base/`, each holding one of the file names below
  (SAM: Meta's `sam_vit_b_01ec64.pth`, or the transformers-format weights of the hub repo), or
- `hub`: the same three repositories downloaded from the Hugging Face hub (cached by huggingface_hub).

Known differences from weights taken from a released checkpoint (which are what the reference really ran):
- the released `vit.*` tensors are bf16(fp16(w)) of these fp32 weights (training cast the model to fp16 before
  DeepSpeed's bf16): a direct fp32 -> bf16 cast differs in rare elements, and fp16's coarser subnormals below 6e-5;
- position tables are resampled here as timm does at load time (fp32, bicubic with antialias, a = -0.5, from the
  stored 37x37 DINOv2 and 27x27 SigLIP grids to 32x32); the checkpoint holds the result of that same resampling
  done once by the reference, so the values agree up to that rounding;
- whether transformers' `facebook/sam-vit-base` weights equal Meta's file bit for bit is not verified here.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from .vision7_weights import DINO, RELEASE, SAM, SIGLIP, TowerGeometry, VisionWeightsError, check_state, expected_shapes

HUB = "hub"
# (repository, file names in order of preference) per tower
SOURCES = {
    DINO: ("timm/vit_large_patch14_reg4_dinov2.lvd142m", ("model.safetensors", "pytorch_model.bin")),
    SIGLIP: ("timm/ViT-SO400M-14-SigLIP-384", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")),
    SAM: ("facebook/sam-vit-base", ("sam_vit_b_01ec64.pth", "model.safetensors", "pytorch_model.bin")),
}
# transformers' SAM vision-encoder names -> Meta's (which the checkpoint uses)
HF_SAM_NAMES = [
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.layer_norm(\d)\.", r"blocks.\1.norm\2."),
    (r"^layers\.", "blocks."),
    (r"^neck\.conv1\.", "neck.0."),
    (r"^neck\.layer_norm1\.", "neck.1."),
    (r"^neck\.conv2\.", "neck.2."),
    (r"^neck\.layer_norm2\.", "neck.3."),
]


def resample_positions(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, n*n, D] -> [1, grid*grid, D] as timm resamples an absolute position table at load time: in fp32,
    bicubic with antialias (PIL's filter, a = -0.5), corners not aligned, cast back to the table's dtype."""
    _, n2, d = pos.shape
    n = round(n2**0.5)
    if n == grid:
        return pos
    x = pos.reshape(1, n, n, d).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, grid * grid, d).to(pos.dtype)


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) torch file cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def _locate(source: str, tower: str) -> Path:
    repo, names = SOURCES[tower]
    if source == HUB:
        from huggingface_hub import hf_hub_download

        errors = []
        for name in names:
            try:
                return Path(hf_hub_download(repo, name))
            except Exception as e:  # not in the repo, or no network: try the next name, report all
                errors.append(f"{name}: {type(e).__name__}")
        raise VisionWeightsError(f"vision tower: cannot download {repo} ({'; '.join(errors)})")
    folder = Path(source).expanduser() / repo
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise VisionWeightsError(f"vision tower: none of {', '.join(names)} in {folder}")


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if any(k.startswith(prefix) for k in sd):
        return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _hf_sam_to_meta(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for pattern, repl in HF_SAM_NAMES:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def tower_from_files(source: str, geometry: TowerGeometry = RELEASE) -> dict[str, torch.Tensor]:
    """The three towers' weights in the checkpoint's names (no `vit.`), position tables resampled to the grid.

    Tensors a tower's file holds beyond the checkpoint's keys (open_clip's text tower, SAM's prompt encoder and
    mask decoder, a classifier head) are left out; a missing or misshapen one is an error naming it.
    """
    want = expected_shapes(geometry)
    parts = {
        DINO: _read(_locate(source, DINO)),
        SIGLIP: _strip(_read(_locate(source, SIGLIP)), "visual.trunk."),  # open_clip wraps the timm trunk
        SAM: _read(_locate(source, SAM)),
    }
    sam = parts[SAM]
    if any(k.startswith("vision_encoder.") for k in sam):  # transformers' SamModel weights
        parts[SAM] = _hf_sam_to_meta(_strip(sam, "vision_encoder."))
    else:
        parts[SAM] = _strip(sam, "image_encoder.")
    out = {}
    for tower, sd in parts.items():
        for k, v in sd.items():
            if tower + k in want:
                out[tower + k] = v
    pos = out.get(DINO + "pos_embed")
    if pos is not None and round((pos.shape[1] - 1) ** 0.5) ** 2 == pos.shape[1] - 1 and DINO + "cls_token" in out:
        # a table with a CLS row (DINOv2's own layout): timm folds that row into the CLS token and drops it
        out[DINO + "cls_token"] = out[DINO + "cls_token"] + pos[:, :1]
        out[DINO + "pos_embed"] = pos[:, 1:]
    for tower, g in ((DINO, geometry.dino), (SIGLIP, geometry.siglip)):
        if tower + "pos_embed" in out:
            out[tower + "pos_embed"] = resample_positions(out[tower + "pos_embed"], g.grid)
    check_state(out, geometry)
    return {k: out[k] for k in want}
