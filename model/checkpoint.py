"""Reading VisualRWKV / RWKV-LM checkpoints without unpickling code, splitting and validating their keys.

A VisualRWKV .pth (the trainer's state_dict) holds three families (spec 1.6): `rwkv.*` (an RWKV-LM state
dict), `proj.weight` and `vit.vision_model.*` (the frozen CLIP tower, possibly absent). A plain RWKV-LM
x060 file holds the `rwkv.*` family without its prefix.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import RWKV6Config


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


@dataclass
class Checkpoint:
    path: Path
    config: RWKV6Config
    rwkv: dict[str, torch.Tensor]  # RWKV-LM keys, no prefix
    proj: torch.Tensor | None  # [n_embd, vision_hidden]; None for a plain RWKV-LM file
    vit: dict[str, torch.Tensor] = field(default_factory=dict)  # CLIPVisionModel keys ("vision_model.*")


def _few(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict from a .pth (weights_only, memory-mapped) or .safetensors file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {path}: truncated or corrupt safetensors file ({e})") from e
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # torch.load fails with many exception types on damaged files
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            raise CheckpointError(
                f"refusing to load {path}: it holds objects other than tensors, and loading never unpickles code"
            ) from e
        raise CheckpointError(f"cannot read {path}: truncated or corrupt checkpoint ({type(e).__name__}: {e})") from e
    # Lightning / DeepSpeed wrappers keep the weights one level down.
    if isinstance(obj, dict) and len(obj) <= 4:
        for wrapper in ("state_dict", "module"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} is not a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a state dict of tensors: non-tensor entries {_few(map(str, bad))}")
    return obj


def detect_rwkv_version(keys) -> str:
    """The RWKV generation of an (unprefixed) RWKV-LM state dict, from its characteristic keys."""
    keys = set(keys)
    att = "blocks.0.att."
    if f"{att}time_maa_x" in keys:
        return "x060"
    if f"{att}x_r" in keys or f"{att}w0" in keys or f"{att}r_k" in keys:
        return "x070"
    if f"{att}time_faaaa" in keys:
        return "x052" if f"{att}gate.weight" in keys else "x050"
    if f"{att}time_first" in keys or f"{att}time_mix_k" in keys:
        return "x040"
    return "unknown"


def split_families(sd: dict[str, torch.Tensor], path: Path):
    """(rwkv, proj, vit) from a VisualRWKV or plain RWKV-LM state dict."""
    if any(k.startswith("rwkv.") for k in sd):
        rwkv = {k[5:]: v for k, v in sd.items() if k.startswith("rwkv.")}
        vit = {k[4:]: v for k, v in sd.items() if k.startswith("vit.")}
        proj = sd.get("proj.weight")
        other = [k for k in sd if not k.startswith(("rwkv.", "vit.")) and k != "proj.weight"]
        if other:
            raise CheckpointError(f"{path}: unexpected keys outside rwkv.*, proj.weight, vit.*: {_few(other)}")
        if proj is None:
            raise CheckpointError(f"{path}: VisualRWKV checkpoint without proj.weight (the image projector)")
        return rwkv, proj, vit
    return dict(sd), None, {}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read, split and validate a VisualRWKV v6 (or plain RWKV-LM x060) checkpoint."""
    path = Path(path)
    rwkv, proj, vit = split_families(read_state_dict(path), path)
    version = detect_rwkv_version(rwkv)
    if version != "x060":
        what = "no RWKV blocks found" if version == "unknown" else f"detected RWKV {version}"
        raise CheckpointError(f"{path}: not an RWKV-6 (x060) checkpoint: {what}; VisualRWKV v6 needs x060 weights")
    try:
        config = RWKV6Config.from_state_dict(rwkv)
    except KeyError as e:
        raise CheckpointError(f"{path}: missing key {e} needed to infer the model shape") from e
    expected = config.expected_shapes()
    missing, unexpected = expected.keys() - rwkv.keys(), rwkv.keys() - expected.keys()
    if missing:
        raise CheckpointError(f"{path}: missing keys: {_few(missing)}")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected keys: {_few(unexpected)}")
    wrong = [f"{k} {tuple(rwkv[k].shape)} != {shape}" for k, shape in expected.items() if rwkv[k].shape != shape]
    if wrong:
        raise CheckpointError(f"{path}: shape mismatch for {config}: {_few(wrong, 3)}")
    if proj is not None and (proj.ndim != 2 or proj.shape[0] != config.n_embd):
        raise CheckpointError(f"{path}: proj.weight has shape {tuple(proj.shape)}; expected [{config.n_embd}, D]")
    return Checkpoint(path=path, config=config, rwkv=rwkv, proj=proj, vit=vit)
