"""Vision towers: the protocol VisualRWKV needs (`VisionEncoder`) and VisualRWKV-6's CLIP tower, with PIL
preprocessing as the reference did it and features [P patches, CLS] (arXiv 2406.13362, section 3;
github.com/howard-hou/VisualRWKV, VisualRWKV-v6/v6.0/src/model.py: the last CLIP encoder layer, no
post-LayerNorm)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from PIL import Image
from torch import nn

from .checkpoint import nonfinite_tensors

try:  # transformers 5: the PIL processor the reference used; the default one runs torchvision and differs
    from transformers import CLIPImageProcessorPil as PilImageProcessor
except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL/numpy one
    from transformers import CLIPImageProcessor as PilImageProcessor

# A strip narrower than 1:MAX_ASPECT would be resized to a gigantic intermediate before the centre crop;
# cutting it to its central part first changes nothing the crop keeps.
MAX_ASPECT = 8
# The release checkpoints spell the tower's keys vit.vision_model.* (CLIPVisionModel of transformers 4)
RELEASE_PREFIX = "vision_model."


# config.json model_type of the towers VisualRWKV-6 was trained with: a full CLIP config (openai/clip-vit-*)
# or its vision part; a SigLIP or plain ViT config would otherwise load silently as a CLIP of the same sizes
CLIP_MODEL_TYPES = ("clip", "clip_vision_model")


class VisionEncoder(Protocol):
    """What VisualRWKV needs from a vision tower. `scan_rows` are the rows of an image's features that an image scan
    may reorder (CLIP: the P patches, not CLS); the scan needs their count to be a square for the
    multidirectional scan."""

    hidden_size: int  # D, the projector's input width
    num_tokens: int  # rows per image

    @property
    def scan_rows(self) -> range: ...

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> pixels [B, ...], ready for forward (may run on an image worker thread)."""
        ...

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, ...] -> features [B, num_tokens, D]."""
        ...


class VisionTowerError(ValueError):
    """A vision tower that cannot be built; the message names the tower and the problem."""


class VisionTower(nn.Module):
    """The CLIP tower of VisualRWKV-6 (a VisionEncoder): [B, 3, S, S] -> [B, P + 1, D], patches then CLS."""

    def __init__(self, clip: nn.Module, processor):
        super().__init__()
        self.clip = clip
        self.processor = processor
        cfg = clip.config
        self.grid = cfg.image_size // cfg.patch_size
        self.num_patches = self.grid * self.grid  # P (576 for ViT-L/14-336)
        self.num_tokens = self.num_patches + 1  # and CLS
        self.hidden_size = cfg.hidden_size

    @property
    def scan_rows(self) -> range:
        """The patches (row-major), not CLS."""
        return range(self.num_patches)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """[B, 3, S, S] float32 pixels from PIL images of any mode and size."""
        images = [_tame_aspect(im) for im in images]
        out = self.processor(images=images, return_tensors="pt")
        return out["pixel_values"]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, P + 1, D]: the last encoder layer (no post-LayerNorm), CLS moved last."""
        p = next(self.clip.parameters())
        hidden = self.clip(pixel_values=pixels.to(device=p.device, dtype=p.dtype)).last_hidden_state
        return torch.cat([hidden[:, 1:], hidden[:, :1]], dim=1)


def _tame_aspect(im: Image.Image) -> Image.Image:
    w, h = im.size
    if max(w, h) <= MAX_ASPECT * min(w, h):
        return im
    keep = MAX_ASPECT * min(w, h)
    if w > h:
        left = (w - keep) // 2
        return im.crop((left, 0, left + keep, h))
    top = (h - keep) // 2
    return im.crop((0, top, w, top + keep))


def _is_local(name_or_path: str) -> bool:
    return Path(name_or_path).exists() or name_or_path.startswith((".", "/", "~"))


def build_vision_tower(name_or_path: str, vit_state: dict[str, torch.Tensor] | None = None) -> VisionTower:
    """CLIP from an HF id or a local folder (config.json + preprocessor_config.json).

    With `vit_state` (the checkpoint's vit.* weights) only the tower's config is read and the weights come
    from the checkpoint; otherwise the tower's own weights are loaded.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if _is_local(name_or_path):
        folder = Path(name_or_path).expanduser()
        for needed in ("config.json", "preprocessor_config.json"):
            if not (folder / needed).is_file():
                raise VisionTowerError(f"vision tower {folder}: missing {needed}")
        name_or_path = str(folder)
    try:
        model_type = CLIPVisionConfig.get_config_dict(name_or_path)[0].get("model_type")
        if model_type not in CLIP_MODEL_TYPES:
            raise VisionTowerError(
                f"vision tower {name_or_path}: not a CLIP vision config (config.json has model_type "
                f"{model_type!r}); VisualRWKV-6 takes a CLIP ViT tower (model_type {' or '.join(CLIP_MODEL_TYPES)}, "
                "e.g. openai/clip-vit-large-patch14-336)"
            )
        processor = PilImageProcessor.from_pretrained(name_or_path)
        config = CLIPVisionConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        if isinstance(e, VisionTowerError):
            raise
        raise VisionTowerError(f"vision tower {name_or_path}: cannot read its configuration ({e})") from e
    _probe(processor, config.image_size, name_or_path)
    if vit_state:
        vit_state = {k: v for k, v in vit_state.items() if not k.endswith("position_ids")}
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            clip = CLIPVisionModel(config)
        expected = clip.state_dict().keys()
        if not any(k.startswith(RELEASE_PREFIX) for k in expected):  # transformers 5 dropped the level
            vit_state = {k.removeprefix(RELEASE_PREFIX): v for k, v in vit_state.items()}
        missing, unexpected = expected - vit_state.keys(), vit_state.keys() - expected
        if missing or unexpected:
            raise VisionTowerError(
                f"checkpoint vit.* weights do not fit the tower {name_or_path}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        wrong = [k for k, t in clip.state_dict().items() if t.shape != vit_state[k].shape]
        if wrong:
            raise VisionTowerError(
                f"checkpoint vit.* weights do not fit the tower {name_or_path}: shape mismatch for {wrong[:3]}"
            )
        clip.load_state_dict({k: v.float() for k, v in vit_state.items()}, assign=True)
    else:
        try:
            clip = CLIPVisionModel.from_pretrained(name_or_path)
        except (OSError, ValueError) as e:
            raise VisionTowerError(
                f"vision tower {name_or_path}: no weights there and none (vit.*) in the checkpoint ({e})"
            ) from e
        bad = nonfinite_tensors(clip.state_dict())  # the checkpoint's vit.* were checked when it was read
        if bad:
            raise VisionTowerError(f"vision tower {name_or_path}: non-finite weights (NaN or inf) in {bad[:4]}")
    return VisionTower(clip.eval(), processor)


def _probe(processor, image_size: int, name: str) -> None:
    """Preprocess a plain gradient image once at load time: a broken preprocessor_config.json (shortest_edge 0,
    a crop the tower cannot take, a zero std) is a set-up error, which would otherwise fail or garble every
    image of a run, one warning per document."""
    probe = Image.radial_gradient("L").convert("RGB").resize((64, 48))
    want = (1, 3, image_size, image_size)
    try:
        pixels = processor(images=[probe], return_tensors="pt")["pixel_values"]
    except Exception as e:  # any failure here is the configuration's, the image is known to be good
        raise VisionTowerError(
            f"vision tower {name}: its image processor (preprocessor_config.json) fails on a plain 64x48 RGB image: "
            f"{type(e).__name__}: {e}"
        ) from e
    if tuple(pixels.shape) != want or not torch.isfinite(pixels).all():
        what = "non-finite pixel values" if tuple(pixels.shape) == want else f"pixels of shape {tuple(pixels.shape)}"
        raise VisionTowerError(
            f"vision tower {name}: its image processor (preprocessor_config.json) turns a plain 64x48 RGB image "
            f"into {what}; the tower takes {want} (check size, crop_size, image_mean and image_std)"
        )
