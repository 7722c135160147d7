"""Random-weight VisualRWKV models in the release key format: tiny ones for tests and the demo, and
real-shaped ones for performance work (VisualRWKV-6: 1B6 / 3B / 7B with a ViT-L/14-336 tower; VisualRWKV-7:
0B1 / 0B4 / 1B5 with the SigLIP + DINOv2 + SAM towers, model/tiny7.py and model/vision7_weights.py).
Deterministic per seed."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .config import RWKV6Config
from .families import VISUALRWKV_6
from .tokenizer import STOP_TOKEN
from .vision import RELEASE_PREFIX, PilImageProcessor, VisionTower
from .visualrwkv import VisualRWKV

# (n_layer, n_embd) of the released models (github.com/howard-hou/VisualRWKV, VisualRWKV-v6/v6.0/scripts/train/
# rwkv{1b5,3b,7b}_*.sh) and of the test model
# "small" is a CPU benchmark shape (RWKV-169M-like), not a release
SIZES = {"tiny": (4, 128), "small": (12, 768), "1b6": (24, 2048), "3b": (32, 2560), "7b": (32, 4096)}
TINY_STOP_LOGIT = 9.0
FAMILY_NAMES = ("v6", "v7")  # make-tiny --family: VisualRWKV-6 (sizes SIZES) or VisualRWKV-7 (tiny7.SIZES7)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def size_config(size: str) -> RWKV6Config:
    if size not in SIZES:
        raise ValueError(f"size={size!r}: expected one of {', '.join(SIZES)}")
    return RWKV6Config.for_size(*SIZES[size])


def random_rwkv_weights(
    cfg: RWKV6Config,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    stop_logit: float = 0.0,
    device: str | torch.device = "cpu",
) -> dict:
    """An RWKV-LM x060 state dict with weights in realistic ranges (decays spread over (0.07, 0.998)).

    `stop_logit` > 0 gives the stop token "\n\n" that much extra logit at every step, so that answers are
    a few tokens long as real ones are, instead of running to max_new_tokens: the last channel of ln_out is
    made a constant 1 that only the stop token's head row reads.
    """
    gen = torch.Generator(device).manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen, device=device)  # noqa: E731
    out = {}
    for key, shape in cfg.expected_shapes().items():
        name = key.rsplit(".", 1)[-1] if "." in key else key
        if key.endswith("time_decay"):
            ramp = torch.linspace(0, 1, shape[-1], device=device) ** 0.7
            t = (-6 + 5 * ramp + 0.3 * randn(shape[-1])).view(shape)
        elif key.endswith("time_faaaa"):
            t = 0.5 * randn(*shape)
        elif "time_maa_w" in key or "time_decay_w" in key:  # LoRA factors
            t = 0.1 * randn(*shape)
        elif "time_maa" in key:
            t = torch.rand(*shape, generator=gen, device=device)
        elif ".ln" in key or key.startswith("ln_out"):
            t = (1.0 if name == "weight" else 0.0) + 0.1 * randn(*shape)
        elif key == "emb.weight":
            t = randn(*shape)
        elif key == "head.weight":
            t = 3 * randn(*shape) / math.sqrt(shape[1])
        else:  # linear layers [out, in]
            t = randn(*shape) / math.sqrt(shape[1])
        out[key] = t.to(dtype)  # one tensor at a time: a 7B model never sits in fp32
    if stop_logit:
        out["ln_out.weight"][-1], out["ln_out.bias"][-1] = 0.0, 1.0
        out["head.weight"][:, -1] = 0.0
        out["head.weight"][STOP_TOKEN, -1] = stop_logit
    return out


def clip_config(size: str):
    """A CLIP vision config: ViT-L/14-336 for the real sizes, a 56-px 4x4-patch toy for 'tiny'."""
    from transformers import CLIPVisionConfig

    if size == "tiny":
        return CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            image_size=56, patch_size=14, projection_dim=32, hidden_act="quick_gelu",
        )  # fmt: skip
    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )  # fmt: skip


def clip_processor(image_size: int):
    return PilImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_convert_rgb=True, do_normalize=True, do_rescale=True, do_resize=True,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3,
    )  # fmt: skip


def random_parts(size: str, seed: int, dtype: torch.dtype, device: str | torch.device, stop_logit: float):
    """(config, RWKV weights, projector weight, CLIP vision model, image processor), all random."""
    from transformers import CLIPVisionModel

    cfg, vcfg = size_config(size), clip_config(size)
    torch.manual_seed(seed)  # transformers initialises from the global generator
    with torch.device(device):
        clip = CLIPVisionModel(vcfg).to(dtype)
    gen = torch.Generator(device).manual_seed(seed + 1)
    proj = torch.randn(cfg.n_embd, vcfg.hidden_size, generator=gen, device=device) / math.sqrt(vcfg.hidden_size)
    weights = random_rwkv_weights(cfg, seed, dtype, stop_logit, device)
    return cfg, weights, proj.to(dtype), clip, clip_processor(vcfg.image_size)


def random_model(
    size: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    family: str = "v6",
    **kw,
) -> VisualRWKV:
    """A random-weight VisualRWKV (`family` v6 or v7) built in memory (no files): for benchmarks of real shapes.
    `kw`: VisualRWKV options (kernel=, padding=, ...)."""
    if family == "v7":
        return _random_model7(size, seed, dtype, device, **kw)
    cfg, weights, proj, clip, processor = random_parts(size, seed, dtype, device, stop_logit=0.0)
    vision = VisionTower(clip.eval(), processor)
    return VisualRWKV.from_weights(VISUALRWKV_6, cfg, weights, {"weight": proj}, vision, **kw)


def make_tiny(
    out: str | Path, seed: int = 0, size: str = "tiny", stop_logit: float | None = None, family: str = "v6"
) -> Path:
    """Write OUT/model.pth in the release key format of `family`: VisualRWKV-6 (rwkv.*, proj.weight, vit.*, and
    OUT/vision_tower/, an HF CLIP folder) or VisualRWKV-7 (rwkv.* x070, vit.* with the three towers, proj.*; no
    folder: the towers are built from vit.*).

    The tiny models' answers stop after a few tokens (stop_logit 9) unless `stop_logit` says otherwise;
    real-shaped models get no such prior.
    """
    if family not in FAMILY_NAMES:
        raise ValueError(f"family={family!r}: expected one of {', '.join(FAMILY_NAMES)}")
    if stop_logit is None:
        stop_logit = TINY_STOP_LOGIT if size == "tiny" else 0.0
    out = Path(out)
    if family == "v7":
        return _make_tiny7(out, seed, size, stop_logit)
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    _, weights, proj, clip, processor = random_parts(size, seed, dtype, "cpu", stop_logit)
    clip.save_pretrained(out / "vision_tower")
    processor.save_pretrained(out / "vision_tower")
    sd = {f"rwkv.{k}": v.contiguous() for k, v in weights.items()}
    sd["proj.weight"] = proj
    for k, v in clip.state_dict().items():  # the release spelling, whatever the transformers version
        sd[f"vit.{RELEASE_PREFIX}{k.removeprefix(RELEASE_PREFIX)}"] = v.contiguous()
    torch.save(sd, out / "model.pth")
    return out


def tower_geometry7(size: str):
    """The VisualRWKV-7 towers of a size: the released ones (448 px SigLIP / DINOv2, 1024 px SAM, 1024 tokens of
    3200) for the real sizes, whose towers time like the release's; a 56 px / 128 px toy (16 tokens) for 'tiny'."""
    from .vision7_weights import RELEASE, TINY

    return TINY if size == "tiny" else RELEASE


def random_state7(size: str, seed: int = 0, dtype: torch.dtype = torch.float32, stop_logit: float = 0.0) -> dict:
    """A VisualRWKV-7 checkpoint's tensors, keys and order as the reference's trainer saves them (the module order
    rwkv, vit, proj of github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/src/model.py): the x070 language model
    of model/tiny7.py, the three towers and the context-gated projector of model/vision7_weights.py."""
    from .tiny7 import random_rwkv7_state_dict, size_config7
    from .vision7_weights import tiny_image_weights

    cfg = size_config7(size)
    sd = {f"rwkv.{k}": v for k, v in random_rwkv7_state_dict(cfg, seed, dtype, stop_logit).items()}
    # other seeds than the language model's, so that no tower tensor repeats a language-model draw
    return sd | tiny_image_weights(cfg.n_embd, seed + 1, tower_geometry7(size), dtype)


def _random_model7(size: str, seed: int, dtype: torch.dtype, device: str | torch.device, **kw) -> VisualRWKV:
    from .families import VISUALRWKV_7
    from .siglip_dino_sam import SigLIPDinoSAMTower
    from .tiny7 import size_config7

    sd = random_state7(size, seed, dtype)
    vit = {k.removeprefix("vit."): v for k, v in sd.items() if k.startswith("vit.")}
    proj = {k.removeprefix("proj."): v for k, v in sd.items() if k.startswith("proj.")}
    rwkv = {k.removeprefix("rwkv."): v for k, v in sd.items() if k.startswith("rwkv.")}
    options = dict(scan=VISUALRWKV_7.default_scan, image_position=VISUALRWKV_7.default_position) | kw
    vision = SigLIPDinoSAMTower.from_vit_state(vit)
    model = VisualRWKV.from_weights(VISUALRWKV_7, size_config7(size), rwkv, proj, vision, **options)
    return model.to(device)


def _make_tiny7(out: Path, seed: int, size: str, stop_logit: float) -> Path:
    # real sizes in bf16 like the release (0B1 2.1 GB, 0B4 2.6 GB, 1B5 4.7 GB: the towers alone are 0.82 G
    # parameters); they are for GPU work, where the towers cost what the release's cost
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    out.mkdir(parents=True, exist_ok=True)
    torch.save(random_state7(size, seed, dtype, stop_logit), out / "model.pth")
    return out
