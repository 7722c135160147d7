"""The vision tower: PIL preprocessing as the reference, [patches, CLS] features, any PIL image."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from visualrwkv_eval.model import VisionTowerError, load_model
from visualrwkv_eval.model.tiny import CLIP_MEAN, CLIP_STD
from visualrwkv_eval.model.vision import build_vision_tower


def pil_reference(im: Image.Image, size: int) -> np.ndarray:
    """CLIP preprocessing written out with PIL and numpy: shortest side -> size (bicubic), centre crop,
    scale to [0, 1], normalise (what the reference's CLIPImageProcessor did)."""
    im = im.convert("RGB")
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    im = im.resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    x = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float64) / 255.0
    return ((x - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


@pytest.mark.parametrize("size", [(90, 60), (56, 56), (37, 200), (1, 1)])
def test_preprocessing_is_the_pil_path(tiny_model, size):
    rng = np.random.default_rng(sum(size))
    im = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    got = tiny_model.vision.preprocess([im])[0].double().numpy()
    assert np.abs(got - pil_reference(im, 56)).max() < 1e-5


def test_features_are_last_layer_patches_then_cls(tiny_model):
    im = Image.new("RGB", (64, 64), (10, 200, 30))
    pixels = tiny_model.vision.preprocess([im])
    with torch.no_grad():
        out = tiny_model.vision.clip(pixel_values=pixels, output_hidden_states=True)
        feats = tiny_model.vision(pixels)[0]
    last = out.hidden_states[-1][0]  # the final encoder layer, before post_layernorm
    assert feats.shape == (17, 64)
    torch.testing.assert_close(feats[:16], last[1:])
    torch.testing.assert_close(feats[16], last[0])


def odd_image(name: str) -> Image.Image:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    if name in ("L", "LA", "P", "RGBA", "CMYK", "1"):
        return rgb.convert(name)
    return {
        "I;16": lambda: Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16)),
        "I": lambda: Image.fromarray(rng.integers(0, 2**20, (30, 40), dtype=np.int32)),
        "F": lambda: Image.fromarray(rng.random((30, 40), dtype=np.float32)),
        "1x1": lambda: Image.new("RGB", (1, 1), (255, 0, 0)),
        "tall strip": lambda: Image.new("RGB", (1, 5000), (0, 255, 0)),
        "wide strip": lambda: Image.new("RGB", (7000, 3), (0, 0, 255)),
        "large": lambda: Image.fromarray(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)),
    }[name]()


ODD = ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16", "I", "F", "1x1", "tall strip", "wide strip", "large"]


@pytest.mark.parametrize("name", ODD)
def test_any_pil_image_is_accepted(tiny_model, name):
    image = odd_image(name)
    if name in ("I;16", "I", "F"):
        assert image.mode.startswith(name[0])
    feats = tiny_model.encode_images([image])
    assert feats.shape == (1, 17, 128) and torch.isfinite(feats).all()


def test_tower_weights_from_checkpoint_or_folder(tiny_dir, tmp_path):
    """Without vit.* in the checkpoint the tower folder's own weights are used: same features."""
    sd = torch.load(tiny_dir / "model.pth", weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("vit.")}, tmp_path / "novit.pth")
    tower = str(tiny_dir / "vision_tower")
    a = load_model(str(tiny_dir / "model.pth"), vision_tower=tower, dtype="float32")
    b = load_model(str(tmp_path / "novit.pth"), vision_tower=tower, dtype="float32")
    im = Image.new("RGB", (50, 70), (90, 10, 200))
    torch.testing.assert_close(a.encode_images([im]), b.encode_images([im]))


def test_tower_errors_name_the_problem(tiny_dir, tmp_path):
    with pytest.raises(VisionTowerError, match=r"missing config\.json"):
        build_vision_tower(str(tmp_path))
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "preprocessor_config.json"):
        shutil.copy(tiny_dir / "vision_tower" / f, bare / f)
    with pytest.raises(VisionTowerError, match="no weights there and none"):
        build_vision_tower(str(bare))
    cfg = json.loads((bare / "config.json").read_text())
    cfg["hidden_size"] = 32
    (bare / "config.json").write_text(json.dumps(cfg))
    sd = torch.load(tiny_dir / "model.pth", weights_only=True)
    vit = {k[4:]: v for k, v in sd.items() if k.startswith("vit.")}
    with pytest.raises(VisionTowerError, match="shape mismatch"):
        build_vision_tower(str(bare), vit)
    with pytest.raises(VisionTowerError, match="missing"):
        build_vision_tower(str(tiny_dir / "vision_tower"), {k: v for k, v in vit.items() if "layers.1." not in k})


def test_projector_width_must_match_the_tower(tiny_dir, tmp_path):
    sd = torch.load(tiny_dir / "model.pth", weights_only=True)
    sd["proj.weight"] = torch.zeros(128, 40)
    torch.save({k: v for k, v in sd.items() if not k.startswith("vit.")}, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"proj\.weight takes 40 features but the vision tower"):
        load_model(str(tmp_path / "m.pth"), vision_tower=str(tiny_dir / "vision_tower"))
