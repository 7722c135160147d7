"""VisualRWKV-7's vision weights in the checkpoint's own names: geometry read from shapes, the expected key set,
clear errors for a malformed tower, the mapping onto transformers' DINOv2 / SigLIP classes and back, and random
towers in that format for tests and `make-tiny`.

The checkpoint (github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00: the trainer saves the whole model's
state_dict) names the towers `vit.dino_featurizer.*` and `vit.siglip_featurizer.*` (timm ViT names, position tables
already resampled to the 32x32 grid of 448 px) and `vit.sam_featurizer.*` (SAM's own names). Keys here are given
without the `vit.` prefix, as `Checkpoint.vit` holds them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from .sam import SamGeometry
from .vision import VisionTowerError

DINO, SIGLIP, SAM = "dino_featurizer.", "siglip_featurizer.", "sam_featurizer."
TOWERS = (DINO, SIGLIP, SAM)


class VisionWeightsError(VisionTowerError):
    """A VisualRWKV-7 vision tower state dict that does not fit; the message names the key and the shapes."""


@dataclass(frozen=True)
class ViTGeometry:
    """A timm ViT run to an intermediate block: `take` is the 0-based block whose raw output (no final norm) is
    used, the second to last in VisualRWKV-7 (timm get_intermediate_layers(n={depth - 2}))."""

    image_size: int
    patch_size: int
    hidden: int
    depth: int
    heads: int
    mlp: int
    registers: int = 0  # DINOv2-reg4: 4 register tokens after CLS; SigLIP: no prefix tokens at all
    attn_pool: bool = False  # SigLIP's MAP head: stored, never run

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def take(self) -> int:
        return self.depth - 2


@dataclass(frozen=True)
class TowerGeometry:
    dino: ViTGeometry
    siglip: ViTGeometry
    sam: SamGeometry = field(default_factory=SamGeometry)

    @property
    def grid(self) -> int:
        return self.dino.grid

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def hidden_size(self) -> int:
        """Width of a token: [DINO | SigLIP | SAM after space-to-depth] (1024 + 1152 + 1024 = 3200 for the release)."""
        return self.dino.hidden + self.siglip.hidden + 4 * self.sam.out_chans

    def check(self) -> None:
        grids = (self.dino.grid, self.siglip.grid, self.sam.grid / 2)
        if len(set(grids)) != 1:
            raise VisionWeightsError(
                f"vision towers disagree on the token grid: DINOv2 {self.dino.grid}x{self.dino.grid}, SigLIP "
                f"{self.siglip.grid}x{self.siglip.grid}, SAM {self.sam.grid}x{self.sam.grid} / 2 after space-to-depth"
            )


# The released towers (VisualRWKV-v7/v7.00/src/vision.py and src/sam.py)
RELEASE = TowerGeometry(
    dino=ViTGeometry(448, 14, 1024, 24, 16, 4096, registers=4),
    siglip=ViTGeometry(448, 14, 1152, 27, 16, 4304, attn_pool=True),
    sam=SamGeometry(),
)
# Same structure, tiny: 56 px -> 4x4 grids, SAM 128 px -> 8x8 -> 4x4; SAM's 3x3 windows need zero padding on 8x8
TINY = TowerGeometry(
    dino=ViTGeometry(56, 14, 128, 3, 2, 256, registers=4),
    siglip=ViTGeometry(56, 14, 144, 3, 2, 192, attn_pool=True),
    sam=SamGeometry(image_size=128, hidden=64, depth=4, heads=2, mlp=128, window=3, global_blocks=(1, 3), out_chans=16),
)


def _vit_shapes(g: ViTGeometry, dino: bool) -> dict[str, tuple[int, ...]]:
    d = g.hidden
    out: dict[str, tuple[int, ...]] = {}
    if dino:
        out |= {"cls_token": (1, 1, d), "reg_token": (1, g.registers, d)}
    out |= {"pos_embed": (1, g.grid * g.grid, d), "patch_embed.proj.weight": (d, 3, g.patch_size, g.patch_size)}
    out["patch_embed.proj.bias"] = (d,)
    for i in range(g.depth):
        b = f"blocks.{i}."
        out |= {b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d)}
        out |= {b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,)}
        out |= {b + "norm2.weight": (d,), b + "norm2.bias": (d,), b + "mlp.fc1.weight": (g.mlp, d)}
        out |= {b + "mlp.fc1.bias": (g.mlp,), b + "mlp.fc2.weight": (d, g.mlp), b + "mlp.fc2.bias": (d,)}
        if dino:
            out |= {b + "ls1.gamma": (d,), b + "ls2.gamma": (d,)}
    out |= {"norm.weight": (d,), "norm.bias": (d,)}
    if g.attn_pool:
        p = "attn_pool."
        out |= {p + "latent": (1, 1, d), p + "q.weight": (d, d), p + "q.bias": (d,), p + "kv.weight": (2 * d, d)}
        out |= {p + "kv.bias": (2 * d,), p + "proj.weight": (d, d), p + "proj.bias": (d,)}
        out |= {p + "norm.weight": (d,), p + "norm.bias": (d,), p + "mlp.fc1.weight": (g.mlp, d)}
        out |= {p + "mlp.fc1.bias": (g.mlp,), p + "mlp.fc2.weight": (d, g.mlp), p + "mlp.fc2.bias": (d,)}
    return out


def _sam_shapes(g: SamGeometry) -> dict[str, tuple[int, ...]]:
    d = g.hidden
    out: dict[str, tuple[int, ...]] = {"pos_embed": (1, g.grid, g.grid, d)}
    out |= {"patch_embed.proj.weight": (d, 3, g.patch_size, g.patch_size), "patch_embed.proj.bias": (d,)}
    for i in range(g.depth):
        b, rel = f"blocks.{i}.", (g.rel_pos_len(i), g.head_dim)
        out |= {b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d)}
        out |= {b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,)}
        out |= {b + "attn.rel_pos_h": rel, b + "attn.rel_pos_w": rel, b + "norm2.weight": (d,), b + "norm2.bias": (d,)}
        out |= {b + "mlp.lin1.weight": (g.mlp, d), b + "mlp.lin1.bias": (g.mlp,), b + "mlp.lin2.weight": (d, g.mlp)}
        out[b + "mlp.lin2.bias"] = (d,)
    c = g.out_chans
    out |= {"neck.0.weight": (c, d, 1, 1), "neck.1.weight": (c,), "neck.1.bias": (c,), "neck.2.weight": (c, c, 3, 3)}
    out |= {"neck.3.weight": (c,), "neck.3.bias": (c,)}
    return out


def expected_shapes(g: TowerGeometry) -> dict[str, tuple[int, ...]]:
    """Every key of the three towers (without `vit.`) and its shape."""
    shapes = {DINO + k: s for k, s in _vit_shapes(g.dino, dino=True).items()}
    shapes |= {SIGLIP + k: s for k, s in _vit_shapes(g.siglip, dino=False).items()}
    return shapes | {SAM + k: s for k, s in _sam_shapes(g.sam).items()}


def _need(vit: dict[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    if key not in vit:
        raise VisionWeightsError(f"vision tower: missing key vit.{key}")
    shape = tuple(vit[key].shape)
    if len(shape) != ndim:
        raise VisionWeightsError(f"vision tower: vit.{key} has shape {list(shape)}, expected {ndim} dimensions")
    return shape


def _depth(vit: dict, prefix: str) -> int:
    found = {int(m.group(1)) for k in vit if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
    if not found:
        raise VisionWeightsError(f"vision tower: no vit.{prefix}blocks.* keys")
    return max(found) + 1


def _square(n: int, key: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise VisionWeightsError(f"vision tower: vit.{key} has {n} positions, not a square grid")
    return side


def _vit_geometry(vit: dict, prefix: str, dino: bool) -> ViTGeometry:
    _, n, d = _need(vit, prefix + "pos_embed", 3)
    patch = _need(vit, prefix + "patch_embed.proj.weight", 4)[-1]
    mlp = _need(vit, prefix + "blocks.0.mlp.fc1.weight", 2)[0]
    # Head counts are not in the shapes: DINOv2 uses 64-wide heads at every size, SigLIP SO400M 72-wide ones
    # (1152 = 16 x 72); other SigLIP widths use 64.
    head_dim = 72 if not dino and d % 72 == 0 else 64
    heads = max(1, d // head_dim)
    registers = _need(vit, prefix + "reg_token", 3)[1] if dino else 0
    pool = any(k.startswith(prefix + "attn_pool.") for k in vit)
    return ViTGeometry(
        _square(n, prefix + "pos_embed") * patch, patch, d, _depth(vit, prefix), heads, mlp, registers, pool
    )


def _sam_geometry(vit: dict) -> SamGeometry:
    _, grid, _, d = _need(vit, SAM + "pos_embed", 4)
    patch = _need(vit, SAM + "patch_embed.proj.weight", 4)[-1]
    depth = _depth(vit, SAM)
    rows = [_need(vit, f"{SAM}blocks.{i}.attn.rel_pos_h", 2) for i in range(depth)]
    head_dim = rows[0][1]
    global_blocks = tuple(i for i, r in enumerate(rows) if r[0] == 2 * grid - 1)
    windowed = {(r[0] + 1) // 2 for i, r in enumerate(rows) if i not in global_blocks}
    if len(windowed) > 1:
        raise VisionWeightsError(f"vision tower: SAM blocks have rel_pos tables of several window sizes {windowed}")
    window = windowed.pop() if windowed else grid
    mlp = _need(vit, SAM + "blocks.0.mlp.lin1.weight", 2)[0]
    out = _need(vit, SAM + "neck.0.weight", 4)[0]
    return SamGeometry(grid * patch, patch, d, depth, d // head_dim, mlp, window, global_blocks, out)


def geometry_from_state(vit: dict[str, torch.Tensor]) -> TowerGeometry:
    """Read the three towers' sizes from the shapes, then check every key and shape against them."""
    g = TowerGeometry(_vit_geometry(vit, DINO, True), _vit_geometry(vit, SIGLIP, False), _sam_geometry(vit))
    g.check()
    check_state(vit, g)
    return g


def check_state(vit: dict[str, torch.Tensor], g: TowerGeometry) -> None:
    """Missing, unexpected or wrongly shaped keys -> VisionWeightsError naming the first few with their shapes."""
    want = expected_shapes(g)
    missing = [k for k in want if k not in vit]
    if missing:
        shown = ", ".join(f"vit.{k} {list(want[k])}" for k in missing[:4])
        raise VisionWeightsError(f"vision tower: {len(missing)} missing key(s): {shown}")
    unexpected = [k for k in vit if k not in want]
    if unexpected:
        raise VisionWeightsError(f"vision tower: unexpected key(s) {', '.join('vit.' + k for k in unexpected[:4])}")
    wrong = [k for k in want if tuple(vit[k].shape) != want[k]]
    if wrong:
        shown = ", ".join(f"vit.{k} is {list(vit[k].shape)}, expected {list(want[k])}" for k in wrong[:4])
        raise VisionWeightsError(f"vision tower: wrong shape: {shown}")


def random_tower_state(g: TowerGeometry = TINY, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """A random tower in the checkpoint's key format (no `vit.` prefix), deterministic per seed: norms near 1,
    linear layers scaled by 1/sqrt(fan-in), so that features stay O(1) through every block."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in expected_shapes(g).items():
        t = torch.randn(shape, generator=gen)
        name = key.rsplit(".", 1)[-1]
        if re.search(r"(norm\d?|neck\.[13])\.(weight|bias)$", key) or name == "gamma":
            t = (1.0 if name in ("weight", "gamma") else 0.0) + 0.1 * t
        elif name == "bias":
            t = 0.02 * t
        elif len(shape) >= 2 and name == "weight":
            t = t / math.sqrt(math.prod(shape[1:]))
        out[key] = t.to(dtype)
    return out


def tiny_image_weights(
    n_embd: int, seed: int = 0, geometry: TowerGeometry = TINY, dtype: torch.dtype = torch.float32, gated: bool = True
) -> dict[str, torch.Tensor]:
    """The image side of a random VisualRWKV-7 checkpoint, keys as in the file: `vit.*` (the three towers) and
    `proj.*` (the context-gated projector, or `proj.weight` with gated=False). For make-tiny and tests."""
    from .projector import random_projector_weights

    vit = random_tower_state(geometry, seed, dtype)
    proj = random_projector_weights(geometry.hidden_size, n_embd, seed + 1, gated, dtype)
    return {f"vit.{k}": v for k, v in vit.items()} | {f"proj.{k}": v for k, v in proj.items()}
