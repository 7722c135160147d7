"""VisualRWKV-7's vision tower (DINOv2 + SigLIP + SAM) and projector against plain re-implementations written here
from the timm / SAM semantics (float64 loops over heads and windows), on tiny random towers in the checkpoint's
key format; the key mapping's round trip; the geometry of the released towers; errors for malformed towers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from visualrwkv_eval.model.projector import (
    ContextGatedProjector,
    adaptive_pool,
    build_projector,
    projector_in_features,
)
from visualrwkv_eval.model.sam import space_to_depth
from visualrwkv_eval.model.siglip_dino_sam import SigLIPDinoSAMTower, build_tower, normalize, unpack_pixels
from visualrwkv_eval.model.vision7_files import SOURCES, tower_from_files
from visualrwkv_eval.model.vision7_weights import (
    DINO,
    RELEASE,
    SAM,
    SIGLIP,
    TINY,
    VisionWeightsError,
    expected_shapes,
    geometry_from_state,
    random_tower_state,
    tiny_image_weights,
)

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


@pytest.fixture(scope="module")
def tiny():
    sd = random_tower_state(TINY, seed=5)
    return sd, SigLIPDinoSAMTower.from_vit_state(sd)


def test_preprocessing_is_the_pil_squash_and_per_encoder_normalisation(tiny):
    _, tower = tiny
    ims = images()
    vit, sam = unpack_pixels(tower.preprocess(ims), 56, 128)
    for got, size, (mean, std) in ((vit, 56, IMAGENET), (vit, 56, HALF), (sam, 128, IMAGENET)):
        want = np.stack([plain_pixels(im, size, mean, std) for im in ims])
        assert torch.equal(normalize(got, mean, std), torch.from_numpy(want))


def test_pixels_survive_any_float_cast(tiny):
    """The packed pixels are integers 0..255: casting them as a pipeline might (bf16) changes no feature."""
    _, tower = tiny
    px = tower.preprocess(images()[:2])
    assert px.dtype == torch.uint8 and px.shape == (2, 3 * 56 * 56 + 3 * 128 * 128)
    with torch.no_grad():
        assert torch.equal(tower(px), tower(px.to(torch.bfloat16)))


def test_features_match_plain_encoders_in_float64(tiny):
    """[DINO block take, CLS + 4 registers dropped | SigLIP block take | SAM neck, space-to-depth], float64."""
    sd, _ = tiny
    tower = SigLIPDinoSAMTower.from_vit_state(sd, dtype=torch.float64)
    ims = images()
    px = tower.preprocess(ims)
    with torch.no_grad():
        got = tower(px)
    p = lambda s, ms: torch.from_numpy(np.stack([plain_pixels(im, s, *ms) for im in ims])).double()  # noqa: E731
    g = TINY
    dino = plain_vit(sub(sd, DINO), p(56, IMAGENET), g.dino.heads, g.dino.take, registers=4)
    siglip = plain_vit(sub(sd, SIGLIP), p(56, HALF), g.siglip.heads, g.siglip.take, registers=None)
    sam = plain_sam(sub(sd, SAM), p(128, IMAGENET), g.sam)
    assert got.shape == (3, 16, 128 + 144 + 64) and got.dtype == torch.float64
    torch.testing.assert_close(got[..., :128], dino, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got[..., 128:272], siglip, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got[..., 272:], sam, rtol=1e-9, atol=1e-9)
    assert got[..., :128].std() > 0.1 and got[..., 272:].std() > 0.1  # not a degenerate (all-zero) comparison


def test_fp32_tower_is_close_to_float64(tiny):
    sd, tower = tiny
    px = tower.preprocess(images()[:1])
    with torch.no_grad():
        want = SigLIPDinoSAMTower.from_vit_state(sd, dtype=torch.float64)(px)
        torch.testing.assert_close(tower(px).double(), want, rtol=1e-4, atol=1e-4)


def test_space_to_depth_channel_order():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    tok = space_to_depth(x)  # [2, 2*3, 12]
    for c in range(3):
        for dy in range(2):
            for dx in range(2):
                for y in range(2):
                    for xx in range(3):
                        assert tok[1, y * 3 + xx, c * 4 + dy * 2 + dx] == x[1, c, 2 * y + dy, 2 * xx + dx]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_of_a_v7_vision_and_projector_state(dtype):
    vit = random_tower_state(TINY, seed=9, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    d, c = TINY.hidden_size, 96
    proj = {
        "gate.weight": torch.randn(d, d, generator=gen).to(dtype),
        "o_proj.weight": torch.randn(c, d, generator=gen).to(dtype),
        "ln_v.weight": torch.randn(c, generator=gen).to(dtype),
        "ln_v.bias": torch.randn(c, generator=gen).to(dtype),
    }
    tower = SigLIPDinoSAMTower.from_vit_state(vit)
    back = tower.vit_state_dict()
    assert list(back) == list(vit)
    for k in vit:
        assert back[k].dtype == dtype and torch.equal(back[k], vit[k]), k
    p = ContextGatedProjector.from_weights(proj)
    assert p.state_dict().keys() == proj.keys()
    assert all(torch.equal(p.state_dict()[k], proj[k]) for k in proj)


def test_loading_assigns_the_tensors_without_copying():
    vit = random_tower_state(TINY, seed=2)
    tower = SigLIPDinoSAMTower.from_vit_state(vit)
    ptr = vit[DINO + "blocks.0.attn.qkv.weight"].untyped_storage().data_ptr()
    assert tower.dino.encoder.layer[0].attention.q_proj.weight.untyped_storage().data_ptr() == ptr
    sam_ptr = vit[SAM + "blocks.0.attn.qkv.weight"].data_ptr()
    assert tower.sam.blocks[0].attn.qkv.weight.data_ptr() == sam_ptr


def test_released_geometry_from_shapes_alone():
    """Key counts and parameter counts of the released towers (DINOv2 ViT-L/14-reg4 and SigLIP SO400M at 448,
    SAM ViT-B at 1024), built on the meta device from shapes alone."""
    vit = {k: torch.empty(s, device="meta") for k, s in expected_shapes(RELEASE).items()}
    assert geometry_from_state(vit) == RELEASE
    count = lambda p: sum(v.numel() for k, v in vit.items() if k.startswith(p))  # noqa: E731
    assert (count(DINO), count(SIGLIP), count(SAM)) == (304_017_408, 428_565_440, 89_670_912)
    assert [sum(k.startswith(p) for k in vit) for p in (DINO, SIGLIP, SAM)] == [343, 342, 177]
    tower = SigLIPDinoSAMTower.from_vit_state(vit)
    assert (tower.num_tokens, tower.hidden_size, tower.grid) == (1024, 3200, 32)
    assert len(tower.dino.encoder.layer) == 23 and len(tower.siglip.encoder.layers) == 26
    assert tower.siglip.config.hidden_act == "gelu" and tower.siglip.config.num_attention_heads == 16
    assert tower.sam.blocks[2].window == 0 and tower.sam.blocks[3].window == 14


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda sd: sd.pop(SAM + "neck.2.weight"),
            r"missing key.*vit\.sam_featurizer\.neck\.2\.weight \[16, 16, 3, 3\]",
        ),
        (
            lambda sd: sd.__setitem__(DINO + "blocks.1.mlp.fc2.bias", torch.zeros(7)),
            r"vit\.dino_featurizer\.blocks\.1\.mlp\.fc2\.bias is \[7\], expected \[128\]",
        ),
        (lambda sd: sd.__setitem__(SIGLIP + "extra", torch.zeros(1)), r"unexpected key.*vit\.siglip_featurizer\.extra"),
        (lambda sd: sd.pop(DINO + "pos_embed"), r"missing key vit\.dino_featurizer\.pos_embed"),
        (
            lambda sd: sd.__setitem__(SIGLIP + "pos_embed", torch.zeros(1, 25, 144)),
            r"disagree on the token grid: DINOv2 4x4, SigLIP 5x5",
        ),
    ],
)
def test_malformed_tower_is_refused_naming_key_and_shapes(edit, message):
    sd = random_tower_state(TINY, seed=1)
    edit(sd)
    with pytest.raises(VisionWeightsError, match=message):
        SigLIPDinoSAMTower.from_vit_state(sd)


def test_context_gated_projector_matches_formula():
    gen = torch.Generator().manual_seed(4)
    w = {
        "gate.weight": torch.randn(12, 12, generator=gen, dtype=torch.float64),
        "o_proj.weight": torch.randn(5, 12, generator=gen, dtype=torch.float64),
        "ln_v.weight": torch.randn(5, generator=gen, dtype=torch.float64),
        "ln_v.bias": torch.randn(5, generator=gen, dtype=torch.float64),
    }
    f = torch.randn(7, 12, generator=gen, dtype=torch.float64)
    y = (f * (1 / (1 + torch.exp(-(f @ w["gate.weight"].T))))) @ w["o_proj.weight"].T
    want = ln(y, w["ln_v.weight"], w["ln_v.bias"], eps=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ContextGatedProjector.from_weights(w)(f), want, rtol=1e-12, atol=1e-12)
    bad = dict(w, **{"o_proj.weight": torch.zeros(5, 11, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"proj\.o_proj\.weight is \[5, 11\], expected \[5, 12\]"):
        ContextGatedProjector.from_weights(bad)
    with pytest.raises(ValueError, match=r"expected proj\.\{gate\.weight"):
        ContextGatedProjector.from_weights({"weight": w["gate.weight"]})


def test_adaptive_pool():
    x = torch.randn(2, 16, 3)
    assert adaptive_pool(x, 16) is x  # the release: 1024 tokens of a 32x32 grid, the identity
    grid = x.view(2, 4, 4, 3)
    want = torch.stack([grid[:, y : y + 2, xx : xx + 2].mean((1, 2)) for y in (0, 2) for xx in (0, 2)], dim=1)
    torch.testing.assert_close(adaptive_pool(x, 4), want)
    with pytest.raises(ValueError, match="cannot pool 16 tower tokens to 5"):
        adaptive_pool(x, 5)


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


def test_encoder_files_in_the_reference_layout(tmp_path):
    """Fallback for a checkpoint without vit.*: timm DINOv2 file (5x5 table with a CLS row, resampled to 4x4),
    open_clip SigLIP file (3x3 table, upsampled), Meta's SAM file; extra tensors of those files ignored."""
    want = random_tower_state(TINY, seed=7)
    gen = torch.Generator().manual_seed(0)
    dino = {k.removeprefix(DINO): v for k, v in want.items() if k.startswith(DINO)}
    dino["pos_embed"] = torch.randn(1, 26, 128, generator=gen)
    siglip = {"visual.trunk." + k.removeprefix(SIGLIP): v for k, v in want.items() if k.startswith(SIGLIP)}
    siglip["visual.trunk.pos_embed"] = torch.randn(1, 9, 144, generator=gen)
    siglip["text.token_embedding.weight"] = torch.zeros(3, 4)
    sam = {"image_encoder." + k.removeprefix(SAM): v for k, v in want.items() if k.startswith(SAM)}
    sam["prompt_encoder.point_embeddings.0.weight"] = torch.zeros(1, 4)
    for tower, sd in ((DINO, dino), (SIGLIP, siglip), (SAM, sam)):
        repo, names = SOURCES[tower]
        (tmp_path / repo).mkdir(parents=True)
        torch.save(sd, tmp_path / repo / names[-1])
    got = tower_from_files(str(tmp_path), TINY)
    assert list(got) == list(want)
    for k in want:
        if not k.endswith(("pos_embed", "cls_token")) or k.startswith(SAM):
            assert torch.equal(got[k], want[k]), k
    torch.testing.assert_close(got[DINO + "cls_token"], want[DINO + "cls_token"] + dino["pos_embed"][:, :1])
    for k, src, n in ((DINO, dino["pos_embed"][0, 1:], 5), (SIGLIP, siglip["visual.trunk.pos_embed"][0], 3)):
        m = pil_resample_matrix(n, 4)
        grid = src.double().numpy().reshape(n, n, -1)
        expect = np.einsum("yi,xj,ijc->yxc", m, m, grid).reshape(1, 16, -1)
        np.testing.assert_allclose(got[k + "pos_embed"].numpy(), expect, rtol=1e-5, atol=1e-5)


def test_build_tower_from_encoder_files_in_the_release_layout(tmp_path):
    """build_tower(folder, None) reads the three files; a NaN in them is refused, naming the tensor."""
    sd = random_tower_state(TINY, seed=4)
    for tower in (DINO, SIGLIP, SAM):
        repo, names = SOURCES[tower]
        (tmp_path / repo).mkdir(parents=True)
        torch.save(sub(sd, tower), tmp_path / repo / names[-1])
    built = build_tower(str(tmp_path), None, TINY)
    assert built.num_tokens == 16 and all(
        torch.equal(v.double(), sd[k].double()) for k, v in built.vit_state_dict().items()
    )
    bad = sub(sd, SAM)
    bad["neck.1.bias"][3] = float("nan")
    torch.save(bad, tmp_path / SOURCES[SAM][0] / SOURCES[SAM][1][-1])
    with pytest.raises(
        VisionWeightsError, match=r"non-finite weights .*sam_featurizer\.neck\.1\.bias \(1 NaN, 0 inf\)"
    ):
        build_tower(str(tmp_path), None, TINY)


def test_no_vit_weights_and_no_usable_source_is_a_clear_error():
    with pytest.raises(VisionWeightsError, match=r"holds no vision weights \(vit\.\*\).*vision_tower=hub"):
        build_tower("openai/clip-vit-large-patch14-336", None)


def test_tiny_image_side_end_to_end_and_in_bf16():
    """make-tiny's image weights (vit.* + proj.*) give n_embd-wide rows; the bf16 tower stays within bf16 noise of
    the fp32 one (no reference exists for the bf16 rounding itself)."""
    sd = tiny_image_weights(n_embd=64, seed=3)
    vit = {k[4:]: v for k, v in sd.items() if k.startswith("vit.")}
    proj = build_projector({k[5:]: v for k, v in sd.items() if k.startswith("proj.")})
    assert isinstance(proj, ContextGatedProjector) and projector_in_features(proj.state_dict()) == TINY.hidden_size
    tower = SigLIPDinoSAMTower.from_vit_state(vit)
    px = tower.preprocess(images()[:2])
    with torch.no_grad():
        feats = tower(px)
        rows = proj(feats.reshape(-1, feats.shape[-1]))
        half = SigLIPDinoSAMTower.from_vit_state(vit, dtype=torch.bfloat16)(px)
    assert rows.shape == (32, 64) and torch.isfinite(rows).all()
    assert half.dtype == torch.bfloat16
    rel = (half.float() - feats).norm() / feats.norm()
    assert 0 < rel < 0.03, rel


def test_sam_from_transformers_weights_equals_transformers_sam(tmp_path):
    """The fallback reads transformers' SamModel weights (facebook/sam-vit-base's format) into the reference's
    names; the SAM encoder here then gives transformers' SamVisionModel neck output (float64, eager)."""
    from safetensors.torch import save_file
    from transformers import SamVisionConfig, SamVisionModel

    g = TINY.sam
    cfg = SamVisionConfig(
        hidden_size=g.hidden, output_channels=g.out_chans, num_hidden_layers=g.depth, num_attention_heads=g.heads,
        image_size=g.image_size, patch_size=g.patch_size, window_size=g.window, global_attn_indexes=list(g.global_blocks),
        mlp_dim=g.mlp, layer_norm_eps=1e-6, hidden_act="gelu", attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    hf = SamVisionModel(cfg).double().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():  # SAM initialises the position tables to zero: make them count
            p.copy_(
                torch.randn_like(p) / math.sqrt(p.shape[-1] if p.ndim > 1 else 1)
                + (name.endswith("weight") and p.ndim == 1)
            )
    want = random_tower_state(TINY, seed=3)
    for tower, sd in (
        (DINO, sub(want, DINO)),
        (SIGLIP, {"visual.trunk." + k: v for k, v in sub(want, SIGLIP).items()}),
    ):
        repo, names = SOURCES[tower]
        (tmp_path / repo).mkdir(parents=True)
        torch.save(sd, tmp_path / repo / names[-1])
    (tmp_path / SOURCES[SAM][0]).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / SOURCES[SAM][0] / "model.safetensors")
    assert all(k.startswith("vision_encoder.") for k in hf.state_dict())
    vit = tower_from_files(str(tmp_path), TINY)
    tower = SigLIPDinoSAMTower.from_vit_state(vit, dtype=torch.float64)
    px = torch.randn(2, 3, g.image_size, g.image_size, dtype=torch.float64)
    with torch.no_grad():
        got, ref = tower.sam(px), hf(pixel_values=px).last_hidden_state
    # transformers' SAM computes its softmax in fp32 even for float64 inputs: agreement to ~1e-7, not 1e-15
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert ref.std() > 0.5


def test_sam_runs_in_groups_of_images_without_changing_them(monkeypatch):
    import visualrwkv_eval.model.siglip_dino_sam as tower_module

    tower = SigLIPDinoSAMTower.from_vit_state(random_tower_state(TINY, seed=8), dtype=torch.float64)
    x = torch.randn(3, 3, 128, 128, dtype=torch.float64)
    monkeypatch.setattr(tower_module, "SAM_BATCH", 2)
    with torch.no_grad():
        grouped = tower.sam_features(x)
        alone = torch.cat([space_to_depth(tower.sam(x[i : i + 1])) for i in range(3)])
    assert grouped.shape == (3, 16, 64)
    torch.testing.assert_close(grouped, alone, rtol=1e-12, atol=1e-12)


def test_projector_kind_is_told_by_the_keys_and_must_fit_the_tower():
    from types import SimpleNamespace

    from visualrwkv_eval.model.checkpoint import CheckpointError
    from visualrwkv_eval.model.projector import LinearProjector, check_projector, random_projector_weights

    linear = random_projector_weights(TINY.hidden_size, 32, gated=False)
    gated = random_projector_weights(TINY.hidden_size, 32)
    assert isinstance(build_projector(linear), LinearProjector) and linear.keys() == {"weight"}
    assert isinstance(build_projector(gated), ContextGatedProjector)
    tower = SimpleNamespace(hidden_size=TINY.hidden_size)
    check_projector(SimpleNamespace(path="m.pth", proj_weights=gated), tower, "t")  # fits: no error
    narrow = random_projector_weights(100, 32)
    with pytest.raises(
        CheckpointError, match=r"m\.pth: the projector takes 100 features but the vision tower t gives 336"
    ):
        check_projector(SimpleNamespace(path="m.pth", proj_weights=narrow), tower, "t")


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


def test_dino_and_siglip_equal_timm_get_intermediate_layers():
    """Against timm itself, as the reference calls it: get_intermediate_layers(n={depth - 2}) (raw block output,
    prefix tokens dropped), on the checkpoint-format tensors, float64. Also: timm's own key set and shapes are the
    checkpoint's (vit.dino_featurizer.*, vit.siglip_featurizer.*)."""
    pytest.importorskip("timm")
    sd = random_tower_state(TINY, seed=11, dtype=torch.float64)
    tdino, tsiglip = timm_towers(TINY)
    for model, prefix in ((tdino, DINO), (tsiglip, SIGLIP)):
        theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert theirs == {k.removeprefix(prefix): tuple(v.shape) for k, v in sd.items() if k.startswith(prefix)}
        model.load_state_dict(sub(sd, prefix))
        model.double().eval()
    tower = SigLIPDinoSAMTower.from_vit_state(sd)
    x = torch.randn(2, 3, 56, 56, dtype=torch.float64)
    with torch.no_grad():
        want_dino = tdino.get_intermediate_layers(x, n={TINY.dino.depth - 2})[0]
        want_siglip = tsiglip.get_intermediate_layers(x, n={TINY.siglip.depth - 2})[0]
        torch.testing.assert_close(tower.dino_features(x), want_dino, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(tower.siglip_features(x), want_siglip, rtol=1e-10, atol=1e-10)
    assert want_dino.shape == (2, 16, 128) and want_siglip.shape == (2, 16, 144)


def test_position_resampling_equals_timm():
    pytest.importorskip("timm")
    from timm.layers import resample_abs_pos_embed

    from visualrwkv_eval.model.vision7_files import resample_positions

    for n, dtype in ((27, torch.bfloat16), (37, torch.float32)):
        pos = torch.randn(1, n * n, 8).to(dtype)
        want = resample_abs_pos_embed(pos, new_size=(32, 32), num_prefix_tokens=0, antialias=True)
        got = resample_positions(pos, 32)
        assert got.dtype == dtype and torch.equal(got, want)


def test_release_key_set_is_timms():
    """The released towers' vit.dino_featurizer.* / vit.siglip_featurizer.* keys and shapes are those of timm's
    vit_large_patch14_reg4_dinov2 and vit_so400m_patch14_siglip_384 built at 448 (on the meta device)."""
    pytest.importorskip("timm")
    import timm
    from accelerate import init_empty_weights

    want = expected_shapes(RELEASE)
    for name, prefix in (("vit_large_patch14_reg4_dinov2", DINO), ("vit_so400m_patch14_siglip_384", SIGLIP)):
        with init_empty_weights():
            model = timm.create_model(name, pretrained=False, num_classes=0, img_size=448)
        theirs = {prefix + k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert theirs == {k: s for k, s in want.items() if k.startswith(prefix)}


def test_dino_and_siglip_are_bitwise_timm_on_cpu_in_fp32_and_bf16():
    """Same arithmetic as the reference's timm towers, not only the same math: every bit equal on CPU."""
    pytest.importorskip("timm")
    sd = random_tower_state(TINY, seed=12)
    x = torch.randn(2, 3, 56, 56)
    for dtype in (torch.float32, torch.bfloat16):
        tdino, tsiglip = timm_towers(TINY)
        tdino.load_state_dict(sub(sd, DINO))
        tsiglip.load_state_dict(sub(sd, SIGLIP))
        tower = SigLIPDinoSAMTower.from_vit_state(sd, dtype=dtype)
        with torch.no_grad():
            xd = x.to(dtype)
            assert torch.equal(tower.dino_features(xd), tdino.to(dtype).eval().get_intermediate_layers(xd, n={1})[0])
            assert torch.equal(
                tower.siglip_features(xd), tsiglip.to(dtype).eval().get_intermediate_layers(xd, n={1})[0]
            )


def test_preprocessing_equals_the_references_torchvision_pipeline(tiny):
    """v7.00 src/vision.py: Resize((S, S), BICUBIC) on the PIL image, ToTensor, Normalize, per encoder."""
    tv = pytest.importorskip("torchvision.transforms")
    _, tower = tiny
    ims = images()
    vit, sam = unpack_pixels(tower.preprocess(ims), 56, 128)
    for got, size, (mean, std) in ((vit, 56, IMAGENET), (vit, 56, HALF), (sam, 128, IMAGENET)):
        pipeline = tv.Compose(
            [
                tv.Resize((size, size), interpolation=tv.InterpolationMode.BICUBIC),
                tv.ToTensor(),
                tv.Normalize(mean, std),
            ]
        )
        want = torch.stack([pipeline(im.convert("RGB")) for im in ims])
        assert torch.equal(normalize(got, mean, std), want)
