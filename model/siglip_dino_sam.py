"""VisualRWKV-7's vision tower: DINOv2 ViT-L/14-reg4 and SigLIP SO400M/14 at 448 px, SAM ViT-B at 1024 px, their
patch tokens concatenated per position as [DINO | SigLIP | SAM] -> [B, 1024, 3200] (arXiv 2406.13362;
github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/src/vision.py).

- DINOv2 (arXiv 2304.07193, registers: arXiv 2309.16588) runs as transformers' `Dinov2WithRegistersModel`: the raw
  output of block 22 of 24 (no final norm), CLS and the 4 registers dropped. Its embeddings add the position table
  to [CLS, patches] and then insert the registers after CLS: the same tokens as timm's, given a zero CLS row (timm's
  CLS token already holds its position embedding). Built at 448 px, the table is used as stored, never interpolated.
- SigLIP (arXiv 2303.15343) runs as transformers' `SiglipVisionModel` with exact (erf) GELU, as timm's
  vit_so400m_patch14_siglip_384 does (transformers' default is the tanh form): block 25 of 27, no prefix tokens,
  the 448 position table as stored in the checkpoint (interpolate_pos_encoding would use a different bicubic).
- SAM (arXiv 2304.02643) is model/sam.py (why not transformers' class: see there), then 2x2 space-to-depth.
Both transformers classes use SDPA attention (timm's fused path; the eager path upcasts the softmax). On CPU
their features equal timm's get_intermediate_layers (the reference's call) bit for bit in fp32 and bf16 (tested);
on a GPU the separate q/k/v products may round differently from timm's fused qkv product. They hold
only the blocks that run (and the final norms, loaded, never run); the stored blocks after the one taken and SigLIP's
pooling head are kept aside, unmodified, so that the tower exports exactly what it loaded.

Preprocessing (v7.00 src/vision.py, evaluate.py): PIL `.convert("RGB")`, squash (no crop, no pad) with PIL bicubic
to 448x448 and 1024x1024 as uint8, then /255 in fp32 and (x - mean) / std per encoder: ImageNet mean/std for DINOv2
and SAM, 0.5/0.5 for SigLIP. The pixels travel as the squashes' integer values, one flat tensor per image (3.7 MB in uint8
instead of 15 MB of fp32); the same fp32 operations, all correctly rounded, run in `forward` on the tower's device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .checkpoint import nonfinite_tensors
from .sam import SamImageEncoder, space_to_depth
from .vision7_weights import (
    DINO,
    RELEASE,
    SAM,
    SIGLIP,
    TowerGeometry,
    VisionWeightsError,
    ViTGeometry,
    expected_shapes,
    geometry_from_state,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
LN_EPS = 1e-6
SAM_BATCH = 4


def pack_pixels(vit: torch.Tensor, sam: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] and [B, 3, S_sam, S_sam] squashes -> one tensor [B, 3 S^2 + 3 S_sam^2], so that pixels batch,
    split and move like any other tower's. Its values are the integers 0..255, exact in every float dtype a
    caller may cast them to (bf16 and fp16 hold integers up to 256 exactly)."""
    return torch.cat([vit.flatten(1), sam.flatten(1)], dim=1)


def unpack_pixels(pixels: torch.Tensor, vit_size: int, sam_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, n = pixels.shape[0], 3 * vit_size * vit_size
    if pixels.shape[1:] != (n + 3 * sam_size * sam_size,):
        raise ValueError(
            f"pixels of shape {list(pixels.shape)}: this tower takes [B, {n + 3 * sam_size * sam_size}] "
            f"({vit_size} px and {sam_size} px squashes, from its preprocess)"
        )
    return pixels[:, :n].view(b, 3, vit_size, vit_size), pixels[:, n:].view(b, 3, sam_size, sam_size)


def squash(image: Image.Image, size: int) -> torch.Tensor:
    """[3, size, size] uint8: RGB, resized to a square by PIL's bicubic filter, aspect ratio not kept."""
    rgb = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def normalize(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """[B, 3, S, S] values 0..255 -> (x / 255 - mean) / std in fp32, the operations of torchvision's ToTensor +
    Normalize on a uint8 image."""
    x = pixels.to(torch.float32) / 255
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# ---- transformers models from the checkpoint's timm names ------------------------------------------------------


def dino_config(g: ViTGeometry):
    from transformers import Dinov2WithRegistersConfig

    if g.mlp % g.hidden:  # the class sizes its MLP by an integer ratio
        raise VisionWeightsError(f"vision tower: DINOv2 MLP width {g.mlp} is not a multiple of its width {g.hidden}")

    return Dinov2WithRegistersConfig(
        hidden_size=g.hidden, num_hidden_layers=g.take + 1, num_attention_heads=g.heads, mlp_ratio=g.mlp // g.hidden,
        num_register_tokens=g.registers, image_size=g.image_size, patch_size=g.patch_size, layer_norm_eps=LN_EPS,
        hidden_act="gelu", qkv_bias=True, layerscale_value=1.0, attn_implementation="sdpa",
    )  # fmt: skip


def siglip_config(g: ViTGeometry):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=g.hidden, intermediate_size=g.mlp, num_hidden_layers=g.take + 1, num_attention_heads=g.heads,
        image_size=g.image_size, patch_size=g.patch_size, layer_norm_eps=LN_EPS, hidden_act="gelu",
        vision_use_head=False, attn_implementation="sdpa",
    )  # fmt: skip


@dataclass(frozen=True)
class NameMap:
    """timm names of one ViT -> a transformers class's names: top-level tensors, per-block Linears / norms, the
    split of the fused qkv, and where the position table goes."""

    top: dict[str, str]
    block: dict[str, str]  # timm module in a block -> transformers module (weight and bias)
    block_tensors: dict[str, str]  # single tensors in a block
    blocks: str  # transformers prefix of block i: blocks.format(i)
    qkv: tuple[str, str, str]  # the three projections replacing attn.qkv
    pos: str
    cls_row: bool = False  # the position table has a row for CLS (DINOv2: zero, timm folds it into cls_token)


DINO_NAMES = NameMap(
    top={"cls_token": "embeddings.cls_token", "reg_token": "embeddings.register_tokens",
         "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
         "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
         "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"},
    block={"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1",
           "mlp.fc2": "mlp.fc2"},
    block_tensors={"ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"},
    blocks="encoder.layer.{}.", qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    pos="embeddings.position_embeddings", cls_row=True,
)  # fmt: skip
# transformers before 5.20 (e.g. 5.17, 4.x) names DINOv2's attention as BERT does
DINO_NAMES_BERT = replace(
    DINO_NAMES,
    block=DINO_NAMES.block | {"attn.proj": "attention.output.dense"},
    qkv=("attention.attention.query", "attention.attention.key", "attention.attention.value"),
)
SIGLIP_NAMES = NameMap(
    top={"patch_embed.proj.weight": "embeddings.patch_embedding.weight",
         "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
         "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"},
    block={"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj", "mlp.fc1": "mlp.fc1",
           "mlp.fc2": "mlp.fc2"},
    block_tensors={}, blocks="encoder.layers.{}.", qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    pos="embeddings.position_embedding.weight",
)  # fmt: skip


def _block_pairs(names: NameMap, i: int) -> list[tuple[str, str]]:
    """(timm key, transformers key) of every tensor of block i except the qkv."""
    a, b = f"blocks.{i}.", names.blocks.format(i)
    pairs = [(f"{a}{m}.{kind}", f"{b}{n}.{kind}") for m, n in names.block.items() for kind in ("weight", "bias")]
    return pairs + [(a + m, b + n) for m, n in names.block_tensors.items()]


def to_hf(t: dict[str, torch.Tensor], g: ViTGeometry, names: NameMap) -> dict[str, torch.Tensor]:
    """One tower's timm tensors (no tower prefix) -> the transformers model's state dict (blocks 0..take)."""
    out = {n: t[m] for m, n in names.top.items()}
    pos = t["pos_embed"]  # [1, grid*grid, D]
    if names.cls_row:  # [CLS, patches] table with a zero CLS row; the mask token is never used
        out[names.pos] = torch.cat([pos.new_zeros(1, 1, g.hidden), pos], dim=1)
        out["embeddings.mask_token"] = pos.new_zeros(1, g.hidden)
    else:
        out[names.pos] = pos[0]
    for i in range(g.take + 1):
        out |= {n: t[m] for m, n in _block_pairs(names, i)}
        b = names.blocks.format(i)
        for kind in ("weight", "bias"):  # timm's fused qkv: rows in thirds [q; k; v] (views, no copy)
            for n, part in zip(names.qkv, t[f"blocks.{i}.attn.qkv.{kind}"].chunk(3)):
                out[f"{b}{n}.{kind}"] = part
    return out


def from_hf(h: dict[str, torch.Tensor], g: ViTGeometry, names: NameMap) -> dict[str, torch.Tensor]:
    """Inverse of to_hf: timm names for everything the transformers model holds."""
    out = {m: h[n] for m, n in names.top.items()}
    pos = h[names.pos]
    out["pos_embed"] = pos[:, 1:] if names.cls_row else pos[None]
    for i in range(g.take + 1):
        out |= {m: h[n] for m, n in _block_pairs(names, i)}
        b = names.blocks.format(i)
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([h[f"{b}{n}.{kind}"] for n in names.qkv])
    return out


def _sub(vit: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in vit.items() if k.startswith(prefix)}


def dino_names(model: nn.Module) -> NameMap:
    """The name map of the installed transformers' Dinov2WithRegistersModel (its attention names changed)."""
    return DINO_NAMES_BERT if "encoder.layer.0.attention.attention.query.weight" in model.state_dict() else DINO_NAMES


def _materialise(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Load `state` into a model built on the meta device, taking the tensors as they are (assign)."""
    want = model.state_dict().keys()
    if want != state.keys():  # another transformers version may name its modules differently
        raise VisionWeightsError(
            f"vision tower: {what} of this transformers version expects other names: missing "
            f"{sorted(want - state.keys())[:3]}, not used {sorted(state.keys() - want)[:3]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


class SigLIPDinoSAMTower(nn.Module):
    """PIL images -> [B, num_tokens, hidden_size] features ([B, 1024, 3200] for the release)."""

    def __init__(self, geometry: TowerGeometry, dino: nn.Module, siglip: nn.Module, sam: SamImageEncoder, unused: dict):
        super().__init__()
        self.geometry = geometry
        self.dino, self.siglip, self.sam = dino, siglip, sam
        self.unused = unused  # stored tensors no step uses (later blocks, SigLIP's pooling head): export only
        self.num_tokens = geometry.num_tokens
        self.hidden_size = geometry.hidden_size
        self.grid = geometry.grid  # tokens are row-major over a grid x grid map; v7 reorders none (no scan)

    @classmethod
    def from_vit_state(cls, vit: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> SigLIPDinoSAMTower:
        """Build from the checkpoint's `vit.*` tensors (keys without `vit.`); they are used as they are (no copy)
        unless `dtype` asks for a cast."""
        from accelerate import init_empty_weights
        from transformers import Dinov2WithRegistersModel, SiglipVisionModel

        g = geometry_from_state(vit)
        if dtype is not None:
            vit = {k: v.to(dtype) for k, v in vit.items()}
        dino_t, siglip_t = _sub(vit, DINO), _sub(vit, SIGLIP)
        with init_empty_weights(include_buffers=False):
            dino = Dinov2WithRegistersModel(dino_config(g.dino))
            siglip = SiglipVisionModel(siglip_config(g.siglip))
        with torch.device("meta"):
            sam = SamImageEncoder(g.sam)
        names = dino_names(dino)
        dino = _materialise(dino, to_hf(dino_t, g.dino, names), "Dinov2WithRegistersModel")
        siglip = _materialise(siglip, to_hf(siglip_t, g.siglip, SIGLIP_NAMES), "SiglipVisionModel")
        sam = _materialise(sam, _sub(vit, SAM), "SAM")
        used = {DINO + k for k in from_hf(dino.state_dict(), g.dino, names)}
        used |= {SIGLIP + k for k in from_hf(siglip.state_dict(), g.siglip, SIGLIP_NAMES)}
        unused = {k: v for k, v in vit.items() if not k.startswith(SAM) and k not in used}
        return cls(g, dino, siglip, sam, unused)

    def vit_state_dict(self) -> dict[str, torch.Tensor]:
        """The checkpoint's `vit.*` tensors (keys without `vit.`), in the checkpoint's order of towers."""
        names = dino_names(self.dino)
        out = {DINO + k: v for k, v in from_hf(self.dino.state_dict(), self.geometry.dino, names).items()}
        out |= {SIGLIP + k: v for k, v in from_hf(self.siglip.state_dict(), self.geometry.siglip, SIGLIP_NAMES).items()}
        out |= {SAM + k: v for k, v in self.sam.state_dict().items()} | self.unused
        return {k: out[k] for k in expected_shapes(self.geometry)}

    @property
    def scan_rows(self) -> range:
        """Every token: they form a square row-major grid. VisualRWKV-7 runs no scan (its family's default)."""
        return range(self.num_tokens)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> [B, 3 S^2 + 3 S_sam^2] uint8 pixels (pack_pixels): the two PIL bicubic squashes."""
        vit, sam = self.geometry.dino.image_size, self.geometry.sam.image_size
        return pack_pixels(
            torch.stack([squash(im, vit) for im in images]), torch.stack([squash(im, sam) for im in images])
        )

    def dino_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised -> [B, grid^2, D_dino]: raw output of block `take`, CLS and registers dropped."""
        h = self.dino.embeddings(pixels)  # [B, 1 + registers + grid^2, D]: [CLS, registers, patches]
        for layer in self.dino.encoder.layer:
            h = layer(h)
        return h[:, 1 + self.geometry.dino.registers :]

    def siglip_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised -> [B, grid^2, D_siglip]: raw output of block `take` (no prefix tokens)."""
        h = self.siglip.embeddings(pixels)
        for layer in self.siglip.encoder.layers:
            h = layer(h, None)
        return h

    def sam_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised -> [B, (g/2)^2, 4 * out_chans]: neck output after 2x2 space-to-depth."""
        # SAM's global blocks hold [heads, 4096, 4096] scores (and two temporaries) per image: 4 images at a time
        # keep that near 3 GB in bf16 whatever the batch
        return torch.cat([space_to_depth(self.sam(part)) for part in pixels.split(SAM_BATCH)])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels from preprocess (any dtype) -> [B, num_tokens, hidden_size] in the tower's dtype."""
        p = next(self.sam.parameters())
        vit, sam = unpack_pixels(pixels.to(p.device), self.geometry.dino.image_size, self.geometry.sam.image_size)
        feats = [
            self.dino_features(normalize(vit, IMAGENET_MEAN, IMAGENET_STD).to(p.dtype)),
            self.siglip_features(normalize(vit, SIGLIP_MEAN, SIGLIP_STD).to(p.dtype)),
            self.sam_features(normalize(sam, IMAGENET_MEAN, IMAGENET_STD).to(p.dtype)),
        ]
        return torch.cat(feats, dim=2)  # [B, tokens, D_dino + D_siglip + 4 * out_chans]


def build_tower(
    name_or_path: str, vit: dict[str, torch.Tensor] | None, geometry: TowerGeometry = RELEASE
) -> SigLIPDinoSAMTower:
    """The tower of a VisualRWKV-7 checkpoint: from its `vit.*` tensors when it has them (`name_or_path` unused),
    else from the encoders' own files (`name_or_path`: a folder in the reference's layout, or `hub`; see
    model/vision7_files.py; `geometry`: the towers those files hold, the released ones unless a test says otherwise)."""
    from .vision7_files import HUB, tower_from_files

    if vit:
        return SigLIPDinoSAMTower.from_vit_state(vit)
    if name_or_path == HUB or Path(name_or_path).expanduser().is_dir():
        vit = tower_from_files(name_or_path, geometry)
        bad = nonfinite_tensors(vit)  # a checkpoint's own vit.* were checked when it was read
        if bad:
            raise VisionWeightsError(f"vision tower {name_or_path}: non-finite weights (NaN or inf) in {bad[:4]}")
        return SigLIPDinoSAMTower.from_vit_state(vit)
    raise VisionWeightsError(
        f"this VisualRWKV-7 checkpoint holds no vision weights (vit.*) and vision_tower={name_or_path!r} is neither "
        f"a folder nor {HUB!r}: pass vision_tower=<folder laid out as the reference's --vision_tower_dir, with "
        "timm/vit_large_patch14_reg4_dinov2.lvd142m/, timm/ViT-SO400M-14-SigLIP-384/, facebook/sam-vit-base/> "
        f"or vision_tower={HUB} to download the three encoders"
    )
