"""VisualRWKV-6: CLIP tower -> bias-free projector -> image rows spliced into the prompt -> RWKV-6 with the
image scan; prefill layer by layer over packed prompts, then recurrent decode (spec 0, 1.2-1.3, 2.4)."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch import nn

from visualrwkv_eval.kernels import KERNELS, resolve_backend

from .checkpoint import Checkpoint, CheckpointError, check_finite, load_checkpoint, nonfinite_tensors
from .config import RWKV6Config
from .prompt import POSITIONS, PromptIds, prompt_ids
from .rowwise import linear
from .rwkv6 import RWKV6, Packing, RecurrentState
from .scan import SCANS, layer_orders
from .tokenizer import world_tokenizer
from .vision import VisionTower, build_vision_tower

DEFAULT_VISION_TOWER = "openai/clip-vit-large-patch14-336"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class VisualRWKV(nn.Module):
    def __init__(
        self,
        config: RWKV6Config,
        vision: VisionTower | None,
        *,
        scan: str = "bidirectional",
        image_position: str = "middle",
        kernel: str = "auto",
    ):
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"scan={scan!r}: expected one of {', '.join(SCANS)}")
        if image_position not in POSITIONS:
            raise ValueError(f"image_position={image_position!r}: expected one of {', '.join(POSITIONS)}")
        self.config = config
        self.rwkv = RWKV6(config)
        self.vision = vision  # None: a plain RWKV-LM checkpoint, text only
        self.proj = None if vision is None else nn.Linear(vision.hidden_size, config.n_embd, bias=False)
        self.tokenizer = world_tokenizer()
        self.scan, self.image_position, self.kernel = scan, image_position, kernel
        self.checkpoint_path: str | None = None  # the file load_model read (named in set-up errors)
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")

    @classmethod
    def from_weights(
        cls,
        config: RWKV6Config,
        rwkv: dict[str, torch.Tensor],
        proj: torch.Tensor | None,
        vision: VisionTower | None,
        **options,
    ) -> VisualRWKV:
        """The model over existing tensors (assigned, not copied: a checkpoint stays memory-mapped)."""
        with torch.device("meta"):
            model = cls(config, vision, **options)
        model.rwkv.load_state_dict(rwkv, strict=True, assign=True)
        if vision is not None:
            model.proj.load_state_dict({"weight": proj}, assign=True)
        return model.eval()

    @property
    def device(self) -> torch.device:
        return self.rwkv.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.rwkv.head.weight.dtype

    @property
    def backend(self) -> str:
        # probed and logged once per (kernel, device, dtype), then a cache lookup (kernels.resolve_backend)
        return resolve_backend(self.kernel, self.device, self.dtype)

    @property
    def image_rows(self) -> int:
        """Rows an image occupies: P patches + CLS (577 for ViT-L/14-336)."""
        return 0 if self.vision is None else self.vision.num_patches + 1

    def bytes_per_sequence(self, text_rows: int = 128) -> int:
        """Memory one more sequence of a batch costs: its recurrent state, the widest per-layer activations of
        its prefill (image rows + `text_rows`), its logits and its image in the tower."""
        cfg, item = self.config, self.dtype.itemsize
        state = cfg.n_layer * (2 * cfg.n_embd * item + cfg.n_head * cfg.head_size**2 * 4)
        rows = self.image_rows + text_rows
        activations = rows * (12 * cfg.n_embd + 2 * cfg.dim_ffn) * item
        tower = 0 if self.vision is None else rows * self.vision.hidden_size * 16 * item
        return state + activations + tower + 2 * cfg.vocab_size * 4

    # ---- inputs ---------------------------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """[B, 3, S, S] pixels, as the tower's CLIP image processor makes them."""
        if self.vision is None:
            raise ValueError("this checkpoint has no vision tower and projector (a plain RWKV-LM file): text only")
        return self.vision.preprocess(images)

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """[B, P + 1, n_embd]: projected CLIP features, patches row-major then CLS."""
        return self.encode_pixels(self.preprocess(images))

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] preprocessed pixels -> [B, P + 1, n_embd]. On CPU one image at a time, so that an
        image's features never depend on the batch (see rowwise.py); on CUDA the batch together."""
        pixels = pixels.to(self.device, self.dtype)
        groups = pixels.split(1) if self.device.type == "cpu" else [pixels]
        feats = torch.cat([self.vision(group) for group in groups])
        return linear(feats.flatten(0, 1), self.proj.weight).view(*feats.shape[:2], -1)

    def prompt(self, question: str, has_image: bool) -> PromptIds:
        return prompt_ids(self.tokenizer, question, has_image, self.image_position)

    def embed(self, ids: PromptIds, image: torch.Tensor | None) -> tuple[torch.Tensor, int | None]:
        """Rows [T, n_embd] of one prompt and the row of its first patch (None: no image segment).

        A VisualRWKV prompt without an image still gets its image rows, all zero, before the text, as the
        reference does (spec 1.3); a plain language model gets none.
        """
        emb = self.rwkv.emb
        to_rows = lambda t: emb(torch.tensor(t, dtype=torch.long, device=self.device))  # noqa: E731
        if ids.has_image:
            if image is None:
                raise ValueError("the prompt has an image slot but no image features were given")
            return torch.cat([to_rows(ids.before), image.to(self.dtype), to_rows(ids.after)]), len(ids.before)
        if self.vision is None:
            return to_rows(ids.after), None
        zeros = torch.zeros(self.image_rows, self.config.n_embd, dtype=self.dtype, device=self.device)
        return torch.cat([zeros, to_rows(ids.after)]), 0

    # ---- the recurrent core --------------------------------------------------------------------------
    def new_state(self, batch: int) -> RecurrentState:
        return RecurrentState.zeros(self.config, batch, self.dtype, self.device)

    @torch.inference_mode()
    def prefill(
        self,
        seqs: list[tuple[torch.Tensor, int | None]],
        state: RecurrentState | None = None,
        logit_rows: list[list[int]] | None = None,
    ) -> tuple[list[torch.Tensor], RecurrentState]:
        """Run B packed sequences (rows, first-patch row) through all layers, each from its own state.

        Returns, per sequence, the logits [n, vocab] of the rows in `logit_rows` (default: its last row),
        and the state after the sequences (updated in place when given).
        """
        lengths = [rows.shape[0] for rows, _ in seqs]
        pack = Packing.from_lengths(lengths, self.device)
        offsets = pack.cu_seqlens[:-1].tolist()
        starts = [off + p for off, (_, p) in zip(offsets, seqs) if p is not None]
        orders = layer_orders(self.scan, self.config.n_layer, sum(lengths), starts, self.image_rows - 1, self.device)
        if state is None:
            state = self.new_state(len(seqs))
        hidden = self.rwkv(torch.cat([rows for rows, _ in seqs]), state, pack, orders, self.backend)
        if logit_rows is None:
            logit_rows = [[n - 1] for n in lengths]
        picks = torch.tensor([off + i for off, rows in zip(offsets, logit_rows) for i in rows], device=self.device)
        logits = self.rwkv.logits(hidden[picks]).split([len(r) for r in logit_rows])
        return list(logits), state

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        """One recurrent step for B sequences: tokens [B] -> logits [B, vocab]; `state` is updated."""
        hidden = self.rwkv(self.rwkv.emb(tokens.to(self.device)), state, Packing.for_decode(), None, self.backend)
        return self.rwkv.logits(hidden, decode=True)

    @torch.inference_mode()
    def text_logits(self, ids: list[int]) -> torch.Tensor:
        """The language model alone on token ids (no image rows): logits [len(ids), vocab]."""
        rows = self.rwkv.emb(torch.tensor(ids, dtype=torch.long, device=self.device))
        (logits,), _ = self.prefill([(rows, None)], logit_rows=[list(range(len(ids)))])
        return logits

    # ---- the user-facing calls (model/generate.py does the work) -------------------------------------
    def generate(
        self,
        context: str,
        images: list[Image.Image] | None = None,
        max_new_tokens: int = 128,
        until: list[str] | None = None,
        **sampling,
    ) -> str:
        """The answer to `context` (the question as lmms-eval builds it) about the first of `images`.

        `images`: a PIL image, a uint8 numpy array (H, W[, 1|3|4]) or a list of them (the first is used);
        `until`: a stop string or a list of them; sampling keywords: temperature (0: greedy), top_p, seed.
        """
        from .generate import GenerationRequest, generate_batch

        unknown = set(sampling) - {"temperature", "top_p", "seed"}
        if unknown:
            raise TypeError(
                f"generate() got unknown keywords {sorted(unknown)}; sampling takes temperature, top_p, seed"
            )
        image = api_image(images)
        if image is not None and self.vision is None:
            raise ValueError(
                "this checkpoint has no vision tower and projector (a plain RWKV-LM file): text only, pass no images"
            )
        request = GenerationRequest(context, image, max_new_tokens, api_until(until), **sampling)
        result = generate_batch(self, [request])[0]
        if result.error:
            raise ValueError(f"cannot process the image: {result.error}")
        return result.text


def load_model(
    pretrained: str,
    vision_tower: str = DEFAULT_VISION_TOWER,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    *,
    scan: str = "bidirectional",
    image_position: str = "middle",
    kernel: str = "auto",
) -> VisualRWKV:
    """A VisualRWKV (or text-only RWKV-6) from a .pth / .safetensors checkpoint, ready for inference.

    Every argument is checked before the checkpoint is read. The weights end up in memory the model owns:
    a tensor still mapped from the file (CPU at the stored dtype) is copied, so that rewriting or truncating
    the file later never changes the model or kills the process (SIGBUS).
    """
    check_options(pretrained, vision_tower, scan, image_position)
    device = parse_device(device)
    dtype = parse_dtype(dtype, device)
    resolve_backend(kernel, device, dtype)  # a CUDA kernel that cannot run shows here, not mid-evaluation
    ckpt = load_checkpoint(pretrained, check_values=False)  # checked below, once converted
    vision = None if ckpt.proj is None else build_vision_tower(vision_tower, ckpt.vit or None)
    if vision is not None and ckpt.proj.shape[1] != vision.hidden_size:
        raise CheckpointError(
            f"{ckpt.path}: proj.weight takes {ckpt.proj.shape[1]} features but the vision tower "
            f"{vision_tower} gives {vision.hidden_size}"
        )
    options = dict(scan=scan, image_position=image_position, kernel=kernel)
    model = VisualRWKV.from_weights(ckpt.config, ckpt.rwkv, ckpt.proj, vision, **options)
    model = model.to(device=device, dtype=dtype)
    own_memory(model)
    model.checkpoint_path = str(ckpt.path)
    check_weights(model, ckpt)
    return model


def check_weights(model: VisualRWKV, ckpt: Checkpoint) -> None:
    """Refuse NaN / inf in any weight the model keeps: they turn every answer into garbage that would still be
    scored. One copy of the weights is read: on a GPU the converted one (milliseconds there; a float16 overflow
    counts too), on the CPU the narrower of the file's and the converted one, since a widening conversion
    (bf16 -> fp32, the CPU default) cannot create an inf. The file is read again only to name a culprit.
    (A tower read from its own folder is checked by build_vision_tower.)"""
    stored = max(t.dtype.itemsize for t in ckpt.rwkv.values())
    if model.device.type == "cpu" and stored < model.dtype.itemsize:
        check_finite(ckpt.tensors(), str(ckpt.path))
        return
    bad = nonfinite_tensors(model.state_dict())
    if not bad:
        return
    check_finite(ckpt.tensors(), str(ckpt.path))  # raises when the file itself holds them, naming its tensors
    raise CheckpointError(
        f"{ckpt.path}: weights overflow {model.dtype} when converted: {', '.join(bad[:4])}; "
        "use dtype=bfloat16 or float32"
    )


def check_options(pretrained, vision_tower, scan: str, image_position: str) -> None:
    """The options that need no device, checked before any file is read."""
    if not isinstance(pretrained, (str, os.PathLike)) or not str(pretrained):
        raise TypeError(f"pretrained={pretrained!r}: expected the path of a .pth or .safetensors checkpoint")
    if not isinstance(vision_tower, (str, os.PathLike)) or not str(vision_tower):
        raise TypeError(f"vision_tower={vision_tower!r}: expected an HF id or a local folder")
    if scan not in SCANS:
        raise ValueError(f"scan={scan!r}: expected one of {', '.join(SCANS)}")
    if image_position not in POSITIONS:
        raise ValueError(f"image_position={image_position!r}: expected one of {', '.join(POSITIONS)}")


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


def own_memory(model: nn.Module) -> None:
    """Copy every CPU parameter or buffer whose memory the process does not own (a file's memory map).

    torch.load(mmap=True), safetensors and transformers' from_pretrained map their files, and .to() keeps a
    tensor that already has the target device and dtype: without this copy a CPU model at the stored dtype
    reads its weights from the files on every forward, so an in-place rewrite of a file changes its answers
    and a truncation kills it with SIGBUS. Mapped (and other borrowed) storages are the non-resizable ones.
    """
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for t in store.values():
                if t is not None and t.device.type == "cpu" and not t.untyped_storage().resizable():
                    t.data = t.data.clone()


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
