"""The SAM ViT-B image encoder (Kirillov et al., arXiv 2304.02643) as VisualRWKV-7 runs it, with its neck and the
2x2 space-to-depth that makes 64x64 SAM features a 32x32 grid (github.com/howard-hou/VisualRWKV,
VisualRWKV-v7/v7.00/src/sam.py, which follows github.com/facebookresearch/segment-anything).

Written here rather than taken from transformers' `SamVisionModel` because that class cannot reproduce the
reference's bf16 arithmetic: its neck LayerNorm computes in fp32 and rounds once, where the reference's
LayerNorm2d rounds every step in the input dtype, and it adds the two relative-position terms to each other
before adding them to the scores, where the reference adds them one after the other. Measured on CPU (random
4-block encoder, 256 px, 14-px windows, transformers 5.24): its eager attention differs from the reference by up to
3e-6 in fp32 and in 82% of the neck outputs in bf16 (up to 0.06); its SDPA attention by up to 0.03 even in fp32.
This encoder gave every bit of the reference's src/sam.py there, in fp32 and bf16 (checked by running the
reference's file, which the tests do not ship; they compare against a float64 re-implementation instead).
Parameter names are the reference's, so the checkpoint's `vit.sam_featurizer.*` keys load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


@dataclass(frozen=True)
class SamGeometry:
    """SAM image-encoder sizes: ViT-B at 1024 px is image 1024, patch 16, width 768, 12 blocks of 12 heads,
    14x14 windows except the global blocks 2, 5, 8, 11, a 256-channel neck."""

    image_size: int = 1024
    patch_size: int = 16
    hidden: int = 768
    depth: int = 12
    heads: int = 12
    mlp: int = 3072
    window: int = 14
    global_blocks: tuple[int, ...] = (2, 5, 8, 11)
    out_chans: int = 256

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def rel_pos_len(self, block: int) -> int:
        """Rows of a block's rel_pos tables: every offset between two positions of its attention span."""
        span = self.grid if block in self.global_blocks else self.window
        return 2 * span - 1


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of [B, C, H, W], step by step in the input dtype (as the reference: in bf16
    every step rounds)."""

    def __init__(self, channels: int, eps: float = LN_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    def __init__(self, g: SamGeometry):
        super().__init__()
        self.proj = nn.Conv2d(3, g.hidden, kernel_size=g.patch_size, stride=g.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # [B, 3, S, S] -> [B, g, g, D] (channels last)


class MLP(nn.Module):
    def __init__(self, g: SamGeometry):
        super().__init__()
        self.lin1 = nn.Linear(g.hidden, g.mlp)
        self.lin2 = nn.Linear(g.mlp, g.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))  # exact (erf) GELU, nn.GELU's default


def relative_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """[size, size, head_dim]: the embedding of offset q - k for every query q and key k along one axis."""
    if rel_pos.shape[0] != 2 * size - 1:  # the reference would interpolate; its checkpoints never need it
        raise ValueError(f"SAM rel_pos table of {rel_pos.shape[0]} rows for a span of {size} (needs {2 * size - 1})")
    idx = torch.arange(size, device=rel_pos.device)
    return rel_pos[idx[:, None] - idx[None, :] + (size - 1)]


class Attention(nn.Module):
    """Multi-head attention over an [h, w] map with decomposed relative positions (MViTv2, arXiv 2112.01526)."""

    def __init__(self, g: SamGeometry, span: int):
        super().__init__()
        self.heads = g.heads
        self.scale = g.head_dim**-0.5
        self.qkv = nn.Linear(g.hidden, 3 * g.hidden)
        self.proj = nn.Linear(g.hidden, g.hidden)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * span - 1, g.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * span - 1, g.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.heads, h * w, -1).unbind(0)  # each [b*heads, h*w, head_dim]
        scores = (q * self.scale) @ k.transpose(-2, -1)
        # rel-pos terms use the unscaled q and are added one after the other, as the reference rounds them
        rq = q.reshape(b * self.heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", rq, relative_table(self.rel_pos_h, h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", rq, relative_table(self.rel_pos_w, w))
        scores = scores.view(b * self.heads, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
        attn = scores.view(b * self.heads, h * w, h * w).softmax(dim=-1)
        out = (attn @ v).view(b, self.heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


def window_partition(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> [B * windows, size, size, C], zero-padded at the bottom and right to whole windows."""
    b, h, w, c = x.shape
    ph, pw = (size - h % size) % size, (size - w % size) % size
    x = F.pad(x, (0, 0, 0, pw, 0, ph))  # zeros AFTER norm1: they become bias-only keys, unmasked (reference)
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // size, size, wp // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size, size, c), (hp, wp)


def window_unpartition(x: torch.Tensor, size: int, padded: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of window_partition: [B * windows, size, size, C] -> [B, H, W, C] without the padding."""
    (hp, wp), (h, w) = padded, hw
    b = x.shape[0] // ((hp // size) * (wp // size))
    x = x.view(b, hp // size, wp // size, size, size, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()


class Block(nn.Module):
    def __init__(self, g: SamGeometry, index: int):
        super().__init__()
        self.window = 0 if index in g.global_blocks else g.window
        self.norm1 = nn.LayerNorm(g.hidden, eps=LN_EPS)
        self.attn = Attention(g, self.window or g.grid)
        self.norm2 = nn.LayerNorm(g.hidden, eps=LN_EPS)
        self.mlp = MLP(g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window:
            hw = x.shape[1:3]
            x, padded = window_partition(x, self.window)
            x = window_unpartition(self.attn(x), self.window, padded, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class SamImageEncoder(nn.Module):
    """[B, 3, S, S] normalised pixels -> neck output [B, out_chans, g, g]."""

    def __init__(self, g: SamGeometry):
        super().__init__()
        self.geometry = g
        self.patch_embed = PatchEmbed(g)
        self.pos_embed = nn.Parameter(torch.zeros(1, g.grid, g.grid, g.hidden))
        self.blocks = nn.ModuleList(Block(g, i) for i in range(g.depth))
        self.neck = nn.Sequential(
            nn.Conv2d(g.hidden, g.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(g.out_chans),
            nn.Conv2d(g.out_chans, g.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(g.out_chans),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C] tokens, row-major over the halved grid; channel c*4 + dy*2 + dx holds
    input (c, 2y + dy, 2x + dx): the reference's LosslessDownSampler is exactly F.pixel_unshuffle(x, 2)."""
    return F.pixel_unshuffle(x, 2).flatten(2).transpose(1, 2)
