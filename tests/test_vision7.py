"""VisualRWKV-7's vision tower (DINOv2 + SigLIP + SAM) and projector against plain re-implementations
(tests/vision7_reference.py) on tiny random towers in the checkpoint's key format; the key mapping's round trip;
the geometry of the released towers; errors for malformed towers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vision7_reference import HALF, IMAGENET, images, ln, plain_pixels, plain_sam, plain_vit, sub

from visualrwkv_eval.model.projector import ContextGatedProjector, adaptive_pool, build_projector, projector_in_features
from visualrwkv_eval.model.sam import space_to_depth
from visualrwkv_eval.model.siglip_dino_sam import SigLIPDinoSAMTower, dino_names, normalize, unpack_pixels
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
    q_name = "encoder.layer.0." + dino_names(tower.dino).qkv[0] + ".weight"  # the installed transformers' name
    assert tower.dino.get_parameter(q_name).untyped_storage().data_ptr() == ptr
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
