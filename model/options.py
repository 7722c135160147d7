"""The user-facing arguments of load_model and VisualRWKV.generate: parsed and checked before anything is loaded,
with messages that name the argument, its value and what is allowed."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from visualrwkv_eval.kernels import KERNELS

from .prompt import POSITIONS
from .scan import SCANS

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def check_options(pretrained, vision_tower, scan: str | None, image_position: str | None, kernel: str = "auto") -> None:
    """The options that need no device, checked before any file is read (None: the family's default)."""
    if not isinstance(pretrained, (str, os.PathLike)) or not str(pretrained):
        raise TypeError(f"pretrained={pretrained!r}: expected the path of a .pth or .safetensors checkpoint")
    if not isinstance(vision_tower, (str, os.PathLike)) or not str(vision_tower):
        raise TypeError(f"vision_tower={vision_tower!r}: expected an HF id or a local folder")
    if scan is not None and scan not in SCANS:
        raise ValueError(f"scan={scan!r}: expected one of {', '.join(SCANS)}")
    if image_position is not None and image_position not in POSITIONS:
        raise ValueError(f"image_position={image_position!r}: expected one of {', '.join(POSITIONS)}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")


def parse_device(device: str | torch.device | None) -> torch.device:
    """The device to run on (default: CUDA when there is one); a device that does not exist is refused."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r}: not a torch device (e.g. cpu, cuda, cuda:1)") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device}: CUDA is not available here; use device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={device}: there are only {torch.cuda.device_count()} CUDA devices")
    return device


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere by default; otherwise one of DTYPES, by name or as a torch.dtype."""
    if dtype is None or dtype == "":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")


def api_until(until: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """`until` of the Python API: one stop string or a list of them (a str is never split into characters)."""
    if until is None:
        return ()
    if isinstance(until, str):
        return (until,)
    if isinstance(until, (list, tuple)) and all(isinstance(u, str) for u in until):
        return tuple(until)
    raise TypeError(f"until={until!r}: expected a string or a list of strings")


def api_image(images) -> Image.Image | None:
    """The image a Python API call is about: a PIL image, a uint8 numpy array, or the first of a list of them."""
    if images is None:
        return None
    if isinstance(images, (list, tuple)):
        return api_image(images[0]) if images else None
    if isinstance(images, Image.Image):
        return images
    if isinstance(images, np.ndarray):
        shape = images.shape
        if images.dtype == np.uint8 and (images.ndim == 2 or (images.ndim == 3 and shape[2] in (1, 3, 4))):
            return Image.fromarray(images[..., 0] if images.ndim == 3 and shape[2] == 1 else images)
        raise TypeError(
            f"images: a numpy array of dtype {images.dtype} and shape {shape} is not an image; pass a uint8 array "
            "(H, W), (H, W, 3) or (H, W, 4), or a PIL image"
        )
    if isinstance(images, torch.Tensor):  # CHW or HWC, raw or normalised: there is no safe guess
        raise TypeError(
            f"images: got a torch.Tensor of shape {tuple(images.shape)}; pass a PIL image (e.g. "
            "torchvision.transforms.functional.to_pil_image(t) for a CHW tensor in [0, 1])"
        )
    raise TypeError(f"images: expected a PIL image, a uint8 numpy array or a list of them, got {type(images).__name__}")
