"""Plain re-implementations of VisualRWKV-7's vision towers for tests/test_vision7*.py, written from the timm and
SAM semantics (github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/src/vision.py and src/sam.py): float64 loops
over heads and windows, the reference's torchvision preprocessing in numpy, PIL's antialiased bicubic as a matrix,
and timm's own towers at a given geometry."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (37, 61, 4), dtype=np.uint8), "RGBA")
    gray = Image.fromarray(rng.integers(0, 256, (150, 90), dtype=np.uint8), "L")
    return [rgba, gray, Image.radial_gradient("L").convert("P")]


# ---- plain re-implementations (float64) ----------------------------------------------------------------------


def plain_pixels(im: Image.Image, size: int, mean, std) -> np.ndarray:
    """torchvision's Resize((S, S), BICUBIC) on a PIL image + ToTensor + Normalize, in numpy float32."""
    a = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)).astype(np.float32) / np.float32(255)
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return a.transpose(2, 0, 1)


def ln(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def softmax_rows(s):
    e = torch.exp(s - s.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def plain_vit(t: dict, pixels: torch.Tensor, heads: int, take: int, registers: int | None) -> torch.Tensor:
    """timm ViT to block `take` (no final norm), prefix tokens dropped. registers=None: no CLS at all (SigLIP)."""
    w = t["patch_embed.proj.weight"]
    x = F.conv2d(pixels, w, t["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = x + t["pos_embed"]  # only the patches have positions (DINOv2: no_embed_class; SigLIP: no CLS)
    prefix = 0
    if registers is not None:
        b = x.shape[0]
        x = torch.cat([t["cls_token"].expand(b, -1, -1), t["reg_token"].expand(b, -1, -1), x], dim=1)
        prefix = 1 + registers
    d = x.shape[-1]
    hd = d // heads
    for i in range(take + 1):
        p = lambda n, i=i: t[f"blocks.{i}.{n}"]  # noqa: E731
        y = ln(x, p("norm1.weight"), p("norm1.bias"))
        qkv = y @ p("attn.qkv.weight").T + p("attn.qkv.bias")
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        out = torch.zeros_like(y)
        for h in range(heads):
            s = slice(h * hd, (h + 1) * hd)
            out[..., s] = softmax_rows(q[..., s] @ k[..., s].transpose(-1, -2) / math.sqrt(hd)) @ v[..., s]
        out = out @ p("attn.proj.weight").T + p("attn.proj.bias")
        x = x + (out * p("ls1.gamma") if registers is not None else out)
        y = ln(x, p("norm2.weight"), p("norm2.bias"))
        y = gelu(y @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")) @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
        x = x + (y * p("ls2.gamma") if registers is not None else y)
    return x[:, prefix:]


def plain_sam_attention(x, p, heads, span):
    """x [h, w, D] (one window or the whole map): attention with decomposed relative positions, loop over heads."""
    h, w, d = x.shape
    hd = d // heads
    qkv = x.reshape(h * w, d) @ p["attn.qkv.weight"].T + p["attn.qkv.bias"]
    out = torch.zeros(h * w, d, dtype=x.dtype)
    rh, rw = p["attn.rel_pos_h"], p["attn.rel_pos_w"]
    ys, xs = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)  # (row, col) of each position
    for head in range(heads):
        q, k, v = (qkv[:, j * d + head * hd : j * d + (head + 1) * hd] for j in range(3))
        scores = (q @ k.T) / math.sqrt(hd)
        # query a, key b: + q_a . Rh[row_a - row_b] + q_a . Rw[col_a - col_b] (offsets shifted to be >= 0)
        table_h = rh[ys[:, None] - ys[None, :] + span - 1]  # [a, b, hd]
        table_w = rw[xs[:, None] - xs[None, :] + span - 1]
        scores = scores + torch.einsum("ac,abc->ab", q, table_h) + torch.einsum("ac,abc->ab", q, table_w)
        out[:, head * hd : (head + 1) * hd] = softmax_rows(scores) @ v
    return (out @ p["attn.proj.weight"].T + p["attn.proj.bias"]).reshape(h, w, d)


def plain_sam(t: dict, pixels: torch.Tensor, g) -> torch.Tensor:
    """SAM image encoder + neck + 2x2 space-to-depth, one image and one window at a time."""
    outs = []
    for img in pixels:
        w = t["patch_embed.proj.weight"]
        x = F.conv2d(img[None], w, t["patch_embed.proj.bias"], stride=w.shape[-1])[0].permute(1, 2, 0)
        x = x + t["pos_embed"][0]
        n = x.shape[0]
        for i in range(g.depth):
            p = {k.removeprefix(f"blocks.{i}."): v for k, v in t.items() if k.startswith(f"blocks.{i}.")}
            y = ln(x, p["norm1.weight"], p["norm1.bias"])
            if i in g.global_blocks:
                y = plain_sam_attention(y, p, g.heads, n)
            else:
                ws = g.window
                padded = math.ceil(n / ws) * ws
                z = torch.zeros(padded, padded, y.shape[-1], dtype=y.dtype)
                z[:n, :n] = y  # zero padding after norm1, attended to without a mask
                for r in range(0, padded, ws):
                    for c in range(0, padded, ws):
                        z[r : r + ws, c : c + ws] = plain_sam_attention(z[r : r + ws, c : c + ws], p, g.heads, ws)
                y = z[:n, :n]
            x = x + y
            y = ln(x, p["norm2.weight"], p["norm2.bias"])
            x = x + gelu(y @ p["mlp.lin1.weight"].T + p["mlp.lin1.bias"]) @ p["mlp.lin2.weight"].T + p["mlp.lin2.bias"]
        m = x.permute(2, 0, 1)[None]
        m = F.conv2d(m, t["neck.0.weight"])
        m = ln(m.permute(0, 2, 3, 1), t["neck.1.weight"], t["neck.1.bias"]).permute(0, 3, 1, 2)
        m = F.conv2d(m, t["neck.2.weight"], padding=1)
        m = ln(m.permute(0, 2, 3, 1), t["neck.3.weight"], t["neck.3.bias"]).permute(0, 3, 1, 2)[0]
        c, hh, ww = m.shape
        tok = torch.zeros(hh // 2, ww // 2, 4 * c, dtype=m.dtype)
        for ch in range(c):
            for dy in range(2):
                for dx in range(2):
                    tok[:, :, ch * 4 + dy * 2 + dx] = m[ch, dy::2, dx::2]
        outs.append(tok.reshape(-1, 4 * c))
    return torch.stack(outs)


def sub(sd: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v.double() for k, v in sd.items() if k.startswith(prefix)}


# ---- tests -----------------------------------------------------------------------------------------------------


def keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(
        x < 1, (a + 2) * x**3 - (a + 3) * x**2 + 1, np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0)
    )


def pil_resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """PIL's antialiased bicubic as a matrix: the kernel stretched by the scale when shrinking, its window
    clipped at the borders and the weights renormalised."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - 2 * stretch + 0.5), 0), min(int(center + 2 * stretch + 0.5), n_in)
        j = np.arange(lo, hi)
        w = keys_cubic((j - center + 0.5) / stretch)
        m[i, lo:hi] = w / w.sum()
    return m


def timm_towers(g):
    """The reference's own towers built by timm (VisualRWKV-v7/v7.00/src/vision.py: vit_large_patch14_reg4_dinov2
    and vit_so400m_patch14_siglip_384, here at the tiny geometry with the same options)."""
    from timm.models.vision_transformer import VisionTransformer

    dino = VisionTransformer(
        img_size=g.dino.image_size, patch_size=g.dino.patch_size, embed_dim=g.dino.hidden, depth=g.dino.depth,
        num_heads=g.dino.heads, mlp_ratio=g.dino.mlp / g.dino.hidden, init_values=1.0, reg_tokens=g.dino.registers,
        no_embed_class=True, num_classes=0,
    )  # fmt: skip
    siglip = VisionTransformer(
        img_size=g.siglip.image_size, patch_size=g.siglip.patch_size, embed_dim=g.siglip.hidden,
        depth=g.siglip.depth, num_heads=g.siglip.heads, mlp_ratio=g.siglip.mlp / g.siglip.hidden,
        class_token=False, global_pool="map", num_classes=0,
    )  # fmt: skip
    return dino, siglip
