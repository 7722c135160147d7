"""VisualRWKV-7's vision weights from other sources than a checkpoint, and the towers against the libraries the
reference ran: the encoder-file fallback (reference folder layout, timm / open_clip / Meta / transformers formats,
position resampling), timm's own DINOv2 and SigLIP (skipped without timm), transformers' SAM, torchvision's
preprocessing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vision7_reference import HALF, IMAGENET, images, pil_resample_matrix, sub, timm_towers

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
    random_tower_state,
)


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


def test_preprocessing_equals_the_references_torchvision_pipeline():
    """v7.00 src/vision.py: Resize((S, S), BICUBIC) on the PIL image, ToTensor, Normalize, per encoder."""
    tv = pytest.importorskip("torchvision.transforms")
    tower = SigLIPDinoSAMTower.from_vit_state(random_tower_state(TINY, seed=5))
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


def test_hub_source_tries_each_file_name_and_reports_all(tmp_path, monkeypatch):
    """vision_tower=hub: each encoder's repository is asked for its file names in order (no network here: the
    download is faked); when none comes, the error names the repository and every attempt."""
    import huggingface_hub

    sd = random_tower_state(TINY, seed=6)
    served = {}
    for tower in (DINO, SIGLIP, SAM):
        repo, names = SOURCES[tower]
        served[(repo, names[-1])] = tmp_path / f"{tower}pt"
        torch.save(sub(sd, tower), served[(repo, names[-1])])
    asked = []

    def fake_download(repo_id, filename):
        asked.append((repo_id, filename))
        if (repo_id, filename) not in served:
            raise FileNotFoundError(filename)
        return str(served[(repo_id, filename)])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    got = tower_from_files("hub", TINY)
    assert all(torch.equal(got[k].double(), sd[k].double()) for k in sd)
    assert asked[:2] == [(SOURCES[DINO][0], "model.safetensors"), (SOURCES[DINO][0], "pytorch_model.bin")]
    served.pop((SOURCES[SAM][0], SOURCES[SAM][1][-1]))
    with pytest.raises(VisionWeightsError, match=r"cannot download facebook/sam-vit-base \(sam_vit_b_01ec64\.pth: "):
        tower_from_files("hub", TINY)
