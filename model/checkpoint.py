"""Reading VisualRWKV / RWKV-LM checkpoints without unpickling code, splitting and validating their keys, and
telling their family (`Family`: name and version; model/families.py maps it to the model's parts).

A VisualRWKV .pth (the trainer's state_dict; github.com/howard-hou/VisualRWKV, VisualRWKV-v6/v6.0/src/model.py)
holds three groups of keys: `rwkv.*` (an RWKV-LM state dict), `proj.*` (the projector: `proj.weight` for
VisualRWKV-6) and `vit.*` (the frozen vision tower, possibly absent). A plain RWKV-LM file holds the `rwkv.*`
group without its prefix.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import WORLD_VOCAB_SIZE, RWKV6Config


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Family:
    """What a checkpoint is: "visualrwkv" (rwkv.*, proj.*, vit.* keys) or "rwkv" (a plain RWKV-LM file), and
    the RWKV generation of its language model (6 for x060; 0 when no RWKV blocks were found)."""

    name: str
    version: int


RWKV_VERSIONS = {"x040": 4, "x050": 5, "x052": 5, "x060": 6, "x070": 7, "unknown": 0}


@dataclass
class Checkpoint:
    path: Path
    family: Family
    config: object  # the family's language-model config (RWKV6Config for version 6)
    rwkv: dict[str, torch.Tensor]  # RWKV-LM keys, no prefix
    proj_weights: dict[str, torch.Tensor]  # the projector's keys without "proj."; empty for a plain RWKV-LM file
    vit: dict[str, torch.Tensor] = field(default_factory=dict)  # the tower's keys (CLIP: "vision_model.*")

    @property
    def proj(self) -> torch.Tensor | None:
        """VisualRWKV-6's projector weight [n_embd, vision_hidden]; None for a plain RWKV-LM file."""
        return self.proj_weights.get("weight")

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor under its name in the file."""
        if self.family.name == "rwkv":
            return dict(self.rwkv)
        named = {f"rwkv.{k}": v for k, v in self.rwkv.items()} | {f"vit.{k}": v for k, v in self.vit.items()}
        return named | {f"proj.{k}": v for k, v in self.proj_weights.items()}


def _few(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _what_file_is_this(path: Path) -> str | None:
    """Why the file cannot be a checkpoint, judged from its first bytes (None: it may be one).

    A failed download is far more common than a malicious file, so the common look-alikes get a message
    that says what the file is and how to get the real one.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        return f"{path} is empty (0 bytes): download it again"
    if head.startswith(b"version https://git-lfs"):  # https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md
        return (
            f"{path} is a Git LFS pointer file ({size} bytes), not the weights: the repository was cloned without "
            "its large files; run `git lfs pull` in it, or download the file itself (e.g. `hf download`)"
        )
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text:
        return (
            f"{path} is an HTML page ({size} bytes), not a checkpoint: the download saved a web page (a login, "
            "error or preview page) instead of the file; download it again, e.g. `hf download <repo> <file>` or a "
            "URL with /resolve/ instead of /blob/"
        )
    if path.suffix == ".safetensors":
        header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
        if not (0 < header_len < size and head[8:9] == b"{"):
            return f"cannot read {path}: not a safetensors file (no JSON header): a truncated or corrupt download?"
    elif not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or its legacy pickle
        return (
            f"cannot read {path}: not a PyTorch checkpoint (neither a zip archive nor a legacy torch file; it starts "
            f"with {head[:16]!r}): a truncated or corrupt download, or another kind of file"
        )
    return None


def _torch_load(path: Path):
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # torch.load fails with many exception types on damaged files
        # The weights-only unpickler names a refused GLOBAL (a class or function the pickle wants to call);
        # any other unpickling error is damage, not code.
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e):
            raise CheckpointError(
                f"refusing to load {path}: it holds objects other than tensors, and loading never unpickles code"
            ) from e
        # (torch's own message for those talks about trusting the source, which misleads here)
        detail = "its pickle is damaged" if isinstance(e, pickle.UnpicklingError) else str(e).split("\n")[0][:200]
        raise CheckpointError(
            f"cannot read {path}: truncated or corrupt checkpoint ({type(e).__name__}: {detail})"
        ) from e


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict from a .pth (weights_only, memory-mapped) or .safetensors file.

    The tensors may still live in the file's memory map; `load_model` copies what it keeps.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    problem = _what_file_is_this(path)
    if problem:
        raise CheckpointError(problem)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {path}: truncated or corrupt safetensors file ({e})") from e
    obj = _torch_load(path)
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
    """(rwkv, proj, vit) key groups, prefixes removed, from a VisualRWKV or plain RWKV-LM state dict (proj is
    empty for the latter)."""
    if any(k.startswith("rwkv.") for k in sd):
        rwkv = {k[5:]: v for k, v in sd.items() if k.startswith("rwkv.")}
        vit = {k[4:]: v for k, v in sd.items() if k.startswith("vit.")}
        proj = {k[5:]: v for k, v in sd.items() if k.startswith("proj.")}
        other = [k for k in sd if not k.startswith(("rwkv.", "vit.", "proj."))]
        if other:
            raise CheckpointError(f"{path}: unexpected keys outside rwkv.*, proj.weight, vit.*: {_few(other)}")
        if not proj:
            raise CheckpointError(f"{path}: VisualRWKV checkpoint without proj.weight (the image projector)")
        return rwkv, proj, vit
    return dict(sd), {}, {}


def read_checkpoint(path: str | Path):
    """(path, family, rwkv, proj, vit, the whole state dict): read and split, nothing checked but the keys'
    grouping. The family's own checks follow (model/families.py, load_checkpoint)."""
    path = Path(path).expanduser()
    sd = read_state_dict(path)
    rwkv, proj, vit = split_families(sd, path)
    version = RWKV_VERSIONS[detect_rwkv_version(rwkv)]
    return path, Family("visualrwkv" if proj else "rwkv", version), rwkv, proj, vit, sd


def check_float(sd: dict[str, torch.Tensor], path: Path) -> None:
    not_float = _not_float(sd)
    if not_float:
        raise CheckpointError(
            f"{path}: tensors of a non-floating dtype: {_few(not_float)}; weights must be float32, bfloat16 or float16"
        )


def _not_float(sd: dict[str, torch.Tensor]) -> list[str]:
    # CLIP checkpoints may carry an integer position_ids buffer, which the tower rebuilds itself
    return [f"{k} ({v.dtype})" for k, v in sd.items() if not v.is_floating_point() and not k.endswith("position_ids")]


def _finite_flag(t: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor: no NaN or inf in `t`. min and max propagate NaN and reach +-inf, so one fused
    aminmax pass decides, with no tensor-sized temporary: 0.3-0.6 ns of CPU time per element (bf16-fp32),
    10-16x less than torch.isfinite(t).all() (measured on a 65536 x 2048 tensor; README, "What is refused")."""
    return torch.isfinite(torch.stack(torch.aminmax(t))).all()


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """'name (n NaN, m inf)' for every floating tensor holding NaN or inf (counted only for the culprits).
    The flags of a device are read back together: one synchronisation per device, not one per tensor."""
    named = [(k, t) for k, t in tensors.items() if t.is_floating_point() and t.numel()]
    flags: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, t in named:
        flags.setdefault(t.device, []).append((name, _finite_flag(t)))
    finite = {}
    for items in flags.values():
        finite.update(zip([n for n, _ in items], torch.stack([f for _, f in items]).tolist()))
    return [f"{k} ({int(t.isnan().sum())} NaN, {int(t.isinf().sum())} inf)" for k, t in named if not finite[k]]


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights with NaN or inf: they turn every answer into garbage that would still be scored."""
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(
            f"{where}: non-finite weights (NaN or inf) in {len(bad)} tensor(s): {_few(bad, 4)}; the file is "
            "damaged or its training diverged, and it cannot give meaningful answers"
        )


def check_language_model(
    path: Path, config, rwkv: dict[str, torch.Tensor], family: str, prefix: str = "", ignored: set[str] = frozenset()
) -> None:
    """The World vocabulary, then every key and shape of `config.expected_shapes()` (keys in `ignored` may be
    there too); errors name keys with `prefix` (the file's own names)."""
    if config.vocab_size != WORLD_VOCAB_SIZE:
        raise CheckpointError(
            f"{path}: emb.weight has a vocabulary of {config.vocab_size} tokens; {family} reads and writes text "
            f"with the RWKV World tokenizer, which needs exactly {WORLD_VOCAB_SIZE} (a model trained with another "
            "tokenizer cannot be evaluated here)"
        )
    expected = config.expected_shapes()
    missing, unexpected = expected.keys() - rwkv.keys(), rwkv.keys() - expected.keys() - ignored
    if missing:
        raise CheckpointError(f"{path}: missing keys: {_few(prefix + k for k in missing)}")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected keys: {_few(prefix + k for k in unexpected)}")
    wrong = [f"{prefix}{k} {tuple(rwkv[k].shape)} != {s}" for k, s in expected.items() if rwkv[k].shape != s]
    if wrong:
        raise CheckpointError(f"{path}: shape mismatch for {config}: {_few(wrong, 3)}")


def rwkv6_config(path: Path, rwkv: dict[str, torch.Tensor], proj: dict[str, torch.Tensor]) -> RWKV6Config:
    """The RWKV-6 config of an x060 language model, every key and shape checked (and VisualRWKV-6's projector)."""
    try:
        config = RWKV6Config.from_state_dict(rwkv)
    except KeyError as e:
        raise CheckpointError(f"{path}: missing key {e} needed to infer the model shape") from e
    check_language_model(path, config, rwkv, "VisualRWKV-6")
    if proj:
        weight, other = proj.get("weight"), sorted(proj.keys() - {"weight"})
        if other:
            raise CheckpointError(f"{path}: unexpected keys outside rwkv.*, proj.weight, vit.*: {_few(other)}")
        if weight.ndim != 2 or weight.shape[0] != config.n_embd:
            raise CheckpointError(f"{path}: proj.weight has shape {tuple(weight.shape)}; expected [{config.n_embd}, D]")
    return config


def rwkv7_config(path: Path, rwkv: dict[str, torch.Tensor], proj: dict[str, torch.Tensor]):
    """The RWKV-7 config of an x070 language model, every dimension and LoRA rank read from the shapes, every key
    and shape checked (and VisualRWKV-7's projector: context-gated or linear, its output width n_embd)."""
    from .config import X070_UNUSED_KEYS, RWKV7Config
    from .projector import build_projector

    try:
        config = RWKV7Config.from_weights(rwkv)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: missing key {e} needed to infer the RWKV-7 model shape") from e
    # newer RWKV-LM files carry an unused layer-0 value-residual LoRA: RWKV7 drops it when loading
    check_language_model(path, config, rwkv, "VisualRWKV", "rwkv." if proj else "", set(X070_UNUSED_KEYS))
    if proj:
        try:
            projector = build_projector({k: v.to("meta") for k, v in proj.items()})
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
        out = projector.o_proj.weight.shape[0] if hasattr(projector, "o_proj") else projector.weight.shape[0]
        if out != config.n_embd:
            raise CheckpointError(
                f"{path}: the projector (proj.*) gives rows of width {out}; the language model's n_embd is "
                f"{config.n_embd}"
            )
    return config
