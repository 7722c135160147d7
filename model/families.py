"""Model families: which parts a checkpoint's family is built from, in one table.

`load_checkpoint` reads a file, tells its `Family` (name and RWKV version, from its keys) and checks it with the
family's own rules; `FAMILIES[family]` is the `Recipe` that `load_model` builds the model from. A new family
(VisualRWKV-7, say) is a new row: its config reader, language-model class, vision-tower builder, projector
builder, prompt template and defaults (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    Family,
    check_finite,
    check_float,
    detect_rwkv_version,
    read_checkpoint,
    rwkv6_config,
    rwkv7_config,
)
from .left_pad import LeftPad
from .projector import LinearProjector, build_projector, check_projector
from .prompt import POSITIONS, Prompt, prompt_ids, prompt_ids7
from .rwkv6 import RWKV6
from .rwkv7 import RWKV7
from .scan import SCANS
from .siglip_dino_sam import build_tower
from .vision import VisionEncoder, build_vision_tower


def _check_linear_projector(ckpt: Checkpoint, vision: VisionEncoder, tower: str) -> None:
    """proj.weight must take the tower's features."""
    if ckpt.proj.shape[1] != vision.hidden_size:
        raise CheckpointError(
            f"{ckpt.path}: proj.weight takes {ckpt.proj.shape[1]} features but the vision tower "
            f"{tower} gives {vision.hidden_size}"
        )


@dataclass(frozen=True)
class Recipe:
    """The parts of one family. `read_config(path, rwkv, proj) -> config` checks the language model's (and the
    projector's) keys and shapes; `language_model(config)` builds the language model (model/language_model.py);
    `vision_tower(name_or_path, vit weights or None)` and `projector(proj weights)` build the image side (None:
    text only); `prompt(tokenizer, question, has_image, position) -> Prompt` is the template."""

    read_config: Callable[[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]], object]
    language_model: Callable[[object], nn.Module]
    vision_tower: Callable[[str, dict[str, torch.Tensor] | None], VisionEncoder] | None
    projector: Callable[[dict[str, torch.Tensor]], nn.Module] | None
    prompt: Callable[..., Prompt] = prompt_ids
    default_scan: str = "bidirectional"
    default_position: str = "middle"
    blank_image: bool = True  # a prompt without an image gets zero image rows (VisualRWKV-6's reference)
    check_projector: Callable[[Checkpoint, VisionEncoder, str], None] = _check_linear_projector
    label: str = ""  # named in errors, e.g. "RWKV-6 (x060)"
    left_pad: LeftPad | None = None  # the reference's left padding before every forward (model/left_pad.py)
    max_images: int | None = 1  # images a prompt takes (None: any number; VisualRWKV-6 uses the first)
    positions: tuple[str, ...] = POSITIONS  # the image positions its template offers
    scans: tuple[str, ...] = SCANS  # the image scans it was trained with


VISUALRWKV_6 = Recipe(rwkv6_config, RWKV6, build_vision_tower, LinearProjector.from_weights, label="RWKV-6 (x060)")
# VisualRWKV-7 (github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00): DINOv2 + SigLIP + SAM tower, context-gated
# (or linear) projector, every image first, no scan, left pads of token 261 to a multiple of 16, several images
VISUALRWKV_7 = Recipe(
    rwkv7_config,
    RWKV7,
    build_tower,
    build_projector,
    prompt=prompt_ids7,
    default_scan="unidirectional",
    default_position="first",
    blank_image=False,
    check_projector=check_projector,
    label="RWKV-7 (x070)",
    left_pad=LeftPad(),
    max_images=None,
    positions=("first",),
    scans=("unidirectional",),
)
FAMILIES: dict[Family, Recipe] = {
    Family("visualrwkv", 6): VISUALRWKV_6,
    Family("rwkv", 6): Recipe(rwkv6_config, RWKV6, None, None, label="RWKV-6 (x060)"),
    Family("visualrwkv", 7): VISUALRWKV_7,
    Family("rwkv", 7): replace(VISUALRWKV_7, vision_tower=None, projector=None),  # text only
}
# Families that the key rule of read_checkpoint (name from the key groups, version from the RWKV blocks) cannot tell
# apart, e.g. two projectors on one RWKV generation: (test on the rwkv, proj and vit key groups, family), asked first.
DETECTORS: list[tuple[Callable[[dict, dict, dict], bool], Family]] = []


def register(family: Family, recipe: Recipe, detect: Callable[[dict, dict, dict], bool] | None = None) -> None:
    """Add a family; `detect(rwkv, proj, vit)` claims checkpoints the key rule would give another family."""
    FAMILIES[family] = recipe
    if detect is not None:
        DETECTORS.insert(0, (detect, family))


def load_checkpoint(path: str | Path, check_values: bool = True) -> Checkpoint:
    """Read, split and validate a checkpoint of a known family (VisualRWKV-6 or -7, or a plain RWKV-LM x060 or
    x070 file).

    Refused: files that are no checkpoint (with what they are), other RWKV generations, missing, unexpected
    or misshapen keys, non-float tensors, vocabularies the World tokenizer cannot serve, and with
    `check_values` NaN / inf weights (load_model checks those itself, on the converted weights).
    """
    path, family, rwkv, proj, vit, sd = read_checkpoint(path)
    family = next((claimed for detect, claimed in DETECTORS if detect(rwkv, proj, vit)), family)
    recipe = FAMILIES.get(family)
    if recipe is None:
        what = "no RWKV blocks found" if family.version == 0 else f"detected RWKV {detect_rwkv_version(rwkv)}"
        known = " or ".join(dict.fromkeys(r.label for r in FAMILIES.values()))
        raise CheckpointError(f"{path}: not an {known} checkpoint: {what}")
    check_float(sd, path)
    config = recipe.read_config(path, rwkv, proj)
    if check_values:
        check_finite(sd, str(path))
    return Checkpoint(path=path, family=family, config=config, rwkv=rwkv, proj_weights=proj, vit=vit)
