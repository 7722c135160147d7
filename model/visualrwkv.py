"""VisualRWKV: a vision tower -> a projector -> image rows spliced into the prompt -> a language model read
with the image scan; prefill layer by layer over packed prompts, then recurrent decode (arXiv 2406.13362;
github.com/howard-hou/VisualRWKV, VisualRWKV-v6/v6.0/src/model.py and evaluate.py).

The parts are separate (docs/architecture.md): the language model (model/language_model.py), the vision tower
(model/vision.py), the projector (model/projector.py), the prompt template (model/prompt.py) and the scan
(model/scan.py); model/families.py says which parts a checkpoint's family uses, and `load_model` builds them."""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from visualrwkv_eval.kernels import KERNELS, resolve_backend

from . import left_pad
from .checkpoint import Checkpoint, CheckpointError, check_finite, nonfinite_tensors
from .families import FAMILIES, Recipe, load_checkpoint
from .generate import GenerationRequest, generate_batch
from .options import api_image, api_until, check_options, parse_device, parse_dtype
from .packing import Packing
from .prompt import POSITIONS, Prompt, prompt_ids
from .scan import SCANS, layer_orders, run_layers
from .tokenizer import world_tokenizer
from .vision import VisionEncoder

DEFAULT_VISION_TOWER = "openai/clip-vit-large-patch14-336"


class VisualRWKV(nn.Module):
    def __init__(
        self,
        rwkv: nn.Module,
        vision: VisionEncoder | None,
        proj: nn.Module | None,
        *,
        scan: str = "bidirectional",
        image_position: str = "middle",
        kernel: str = "auto",
        prompt_template=prompt_ids,
        blank_image: bool = True,
        pad: left_pad.LeftPad | None = None,
        padding: str = "exact",
        max_images: int | None = 1,
    ):
        """`rwkv`: the language model (model/language_model.py); `vision` and `proj`: the tower and projector
        (None: a plain language-model checkpoint, text only); `prompt_template(tokenizer, question, has_image,
        position) -> Prompt`; `blank_image`: a prompt without an image still gets zero image rows before its
        text, as VisualRWKV-6's reference does; `pad`: the family's left padding (VisualRWKV-7: token 261 up to a
        multiple of 16 before every forward), run `padding`="exact" or "once" (model/left_pad.py); `max_images`:
        images a prompt takes (None: any number)."""
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"scan={scan!r}: expected one of {', '.join(SCANS)}")
        if image_position not in POSITIONS:
            raise ValueError(f"image_position={image_position!r}: expected one of {', '.join(POSITIONS)}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")
        self.config = rwkv.config
        self.rwkv = rwkv
        self.vision = vision
        self.proj = proj
        self.tokenizer = world_tokenizer()
        self.scan, self.image_position, self.kernel = scan, image_position, kernel
        self.prompt_template, self.blank_image = prompt_template, blank_image
        if padding not in left_pad.PADDINGS:
            raise ValueError(f"padding={padding!r}: expected one of {', '.join(left_pad.PADDINGS)}")
        self.pad, self.padding, self.max_images = pad, padding, max_images
        self.checkpoint_path: str | None = None  # the file load_model read (named in set-up errors)

    @classmethod
    def from_weights(
        cls,
        recipe: Recipe,
        config,
        rwkv_weights: dict[str, torch.Tensor],
        proj_weights: dict[str, torch.Tensor],
        vision: VisionEncoder | None,
        **options,
    ) -> VisualRWKV:
        """The model of a family (model/families.py) over existing tensors (assigned, not copied: a checkpoint
        stays memory-mapped): language-model weights without the "rwkv." prefix, projector weights without
        "proj."."""
        with torch.device("meta"):
            rwkv = recipe.language_model(config)
        rwkv.load_state_dict(rwkv_weights, strict=True, assign=True)
        proj = None if vision is None else recipe.projector(proj_weights)
        defaults = dict(prompt_template=recipe.prompt, blank_image=recipe.blank_image, pad=recipe.left_pad)
        options = defaults | dict(max_images=recipe.max_images) | options
        return cls(rwkv.eval(), vision, proj, **options).eval()

    @property
    def device(self) -> torch.device:
        return self.rwkv.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.rwkv.head.weight.dtype

    @property
    def backend(self) -> str:
        # probed and logged once per (kernel, device, dtype, op), then a cache lookup (kernels.resolve_backend)
        return resolve_backend(self.kernel, self.device, self.dtype, self.rwkv.wkv_op)

    def _bind_kernels(self) -> None:
        """Give the language model the WKV implementation for its device and dtype (a cache lookup per forward;
        the language model switches only when the answer changes, e.g. after a move to another device)."""
        backend = self.backend
        if self.rwkv.backend != backend:
            self.rwkv.use_backend(backend)

    @property
    def image_rows(self) -> int:
        """Rows an image occupies: P patches + CLS (577 for ViT-L/14-336)."""
        return 0 if self.vision is None else self.vision.num_tokens

    def bytes_per_sequence(self, text_rows: int = 128) -> int:
        """Memory one more sequence of a batch costs: its recurrent state, the widest per-layer activations of
        its prefill (image rows + `text_rows`), its logits and its image in the tower."""
        cfg, item = self.config, self.dtype.itemsize
        state = self.rwkv.new_state(1, self.dtype, "meta").bytes_per_sequence
        if self.pad is not None and self.padding == "exact":  # up to one chain per pad count, and the rows
            state *= self.pad.multiple + 1
        rows = self.image_rows + text_rows
        activations = rows * (12 * cfg.n_embd + 2 * cfg.dim_ffn) * item
        tower = 0 if self.vision is None else rows * self.vision.hidden_size * 16 * item
        return state + activations + tower + 2 * cfg.vocab_size * 4

    # ---- inputs ---------------------------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """[B, 3, S, S] pixels, as the tower's image processor makes them."""
        if self.vision is None:
            raise ValueError("this checkpoint has no vision tower and projector (a plain RWKV-LM file): text only")
        return self.vision.preprocess(images)

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """[B, tokens, n_embd]: projected features (CLIP: patches row-major, then CLS)."""
        return self.encode_pixels(self.preprocess(images))

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] preprocessed pixels -> [B, tokens, n_embd]. On CPU one image at a time, so that an
        image's features never depend on the batch (see rowwise.py); on CUDA the batch together."""
        pixels = pixels.to(self.device, self.dtype)
        groups = pixels.split(1) if self.device.type == "cpu" else [pixels]
        feats = torch.cat([self.vision(group) for group in groups])
        return self.proj(feats.flatten(0, 1)).view(*feats.shape[:2], -1)

    def prompt(self, question: str, has_image: bool | int) -> Prompt:
        """The template's prompt; `has_image` may be the number of images (for families that take several)."""
        return self.prompt_template(self.tokenizer, question, has_image, self.image_position)

    def embed_tokens(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Token ids -> language-model rows [T, n_embd] (no image)."""
        return self.rwkv.embed_tokens(torch.as_tensor(ids, dtype=torch.long, device=self.device))

    def embed(self, prompt: Prompt, images: torch.Tensor | list[torch.Tensor] | None) -> tuple[torch.Tensor, list[int]]:
        """Rows [T, n_embd] of one prompt and the row where each of its image segments starts.

        `images`: projected features [tokens, n_embd] per image slot (a single tensor for one). A VisualRWKV-6
        prompt without an image still gets its image rows, all zero, before the text, as the reference does
        (github.com/howard-hou/VisualRWKV, VisualRWKV-v6/v6.0/src/dataset.py); a plain language model gets none.
        """
        if isinstance(images, torch.Tensor):  # one image [tokens, n_embd], or several [n, tokens, n_embd]
            feats = list(images) if images.dim() == 3 else [images]
        else:
            feats = list(images or [])
        if prompt.num_images > len(feats):
            raise ValueError("the prompt has an image slot but no image features were given")
        parts, starts, row = [], [], 0
        if prompt.num_images == 0 and self.vision is not None and self.blank_image:
            parts.append(torch.zeros(self.image_rows, self.config.n_embd, dtype=self.dtype, device=self.device))
            starts, row = [0], self.image_rows
        for segment in prompt.segments:
            if isinstance(segment, list):
                part = self.embed_tokens(segment)
            else:
                part = feats[segment.index].to(self.dtype)
                starts.append(row)
            parts.append(part)
            row += part.shape[0]
        return torch.cat(parts), starts

    # ---- the recurrent core --------------------------------------------------------------------------
    def new_state(self, batch: int):
        return self.rwkv.new_state(batch, self.dtype, self.device)

    def _scan_orders(self, lengths: list[int], image_starts: list[int]) -> list[torch.Tensor | None] | None:
        if self.vision is None or not image_starts:
            return None
        rows = self.vision.scan_rows
        starts = [s + rows.start for s in image_starts]
        return layer_orders(self.scan, len(self.rwkv.blocks), sum(lengths), starts, len(rows), self.device)

    @torch.inference_mode()
    def prefill(
        self,
        seqs: list[tuple[torch.Tensor, int | list[int] | None]],
        state=None,
        logit_rows: list[list[int]] | None = None,
    ):
        """Run B packed sequences (rows, rows where their image segments start) through all layers, each from
        its own state.

        Returns, per sequence, the logits [n, vocab] of the rows in `logit_rows` (default: its last row),
        and the state after the sequences (updated in place when given). A left-padded family (VisualRWKV-7)
        computes them with the reference's pads (model/left_pad.py); its state is then a left_pad.PaddedState
        with padding=exact.
        """
        if self.pad is not None:
            return left_pad.prefill(self, self.pad, self.padding, seqs, state, logit_rows)
        return self.raw_prefill(seqs, state, logit_rows)

    @torch.inference_mode()
    def raw_prefill(
        self,
        seqs: list[tuple[torch.Tensor, int | list[int] | None]],
        state=None,
        logit_rows: list[list[int]] | None = None,
    ):
        """`prefill` without left padding: the language model on exactly these rows."""
        self._bind_kernels()
        lengths = [rows.shape[0] for rows, _ in seqs]
        pack = Packing.from_lengths(lengths, self.device)
        offsets = pack.cu_seqlens[:-1].tolist()
        starts = [off + s for off, (_, image) in zip(offsets, seqs) for s in _starts(image)]
        if state is None:
            state = self.new_state(len(seqs))
        orders = self._scan_orders(lengths, starts)
        hidden = run_layers(self.rwkv, torch.cat([rows for rows, _ in seqs]), state, pack, orders)
        if logit_rows is None:
            logit_rows = [[n - 1] for n in lengths]
        picks = torch.tensor([off + i for off, rows in zip(offsets, logit_rows) for i in rows], device=self.device)
        logits = self.rwkv.logits(hidden[picks]).split([len(r) for r in logit_rows])
        return list(logits), state

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, state) -> torch.Tensor:
        """One step for B sequences: tokens [B] -> logits [B, vocab]; `state` is updated (with left padding:
        the state of the sequences' pad chains, model/left_pad.py)."""
        if self.pad is not None:
            return left_pad.decode(self, self.pad, self.padding, tokens, state)
        return self.raw_decode(tokens, state)

    @torch.inference_mode()
    def raw_decode(self, tokens: torch.Tensor, state) -> torch.Tensor:
        """One recurrent step without left padding: tokens [B] -> logits [B, vocab]; `state` is updated."""
        self._bind_kernels()
        hidden = run_layers(self.rwkv, self.embed_tokens(tokens), state, Packing.for_decode(), None)
        return self.rwkv.logits(hidden)

    @torch.inference_mode()
    def text_logits(self, ids: list[int]) -> torch.Tensor:
        """The language model alone on token ids (no image rows, no left pads): logits [len(ids), vocab]."""
        (logits,), _ = self.raw_prefill([(self.embed_tokens(ids), None)], logit_rows=[list(range(len(ids)))])
        return logits

    # ---- the user-facing call (model/generate.py does the work) --------------------------------------
    def generate(
        self,
        context: str,
        images: list[Image.Image] | None = None,
        max_new_tokens: int = 128,
        until: list[str] | None = None,
        **sampling,
    ) -> str:
        """The answer to `context` (the question as lmms-eval builds it) about `images`.

        `images`: a PIL image, a uint8 numpy array (H, W[, 1|3|4]) or a list of them (VisualRWKV-6 uses the
        first; VisualRWKV-7 all of them, in order);
        `until`: a stop string or a list of them; sampling keywords: temperature (0: greedy), top_p, seed.
        """
        unknown = set(sampling) - {"temperature", "top_p", "seed"}
        if unknown:
            raise TypeError(
                f"generate() got unknown keywords {sorted(unknown)}; sampling takes temperature, top_p, seed"
            )
        many = isinstance(images, (list, tuple)) and len(images) > 1 and self.max_images != 1
        image = [api_image(im) for im in images] if many else api_image(images)
        if image is not None and self.vision is None:
            raise ValueError(
                "this checkpoint has no vision tower and projector (a plain RWKV-LM file): text only, pass no images"
            )
        request = GenerationRequest(context, image, max_new_tokens, api_until(until), **sampling)
        result = generate_batch(self, [request])[0]
        if result.error:
            raise ValueError(f"cannot process the image: {result.error}")
        return result.text


def _starts(image: int | list[int] | None) -> list[int]:
    """The image-segment starts of a prefill sequence: a list, one row (the older form) or None."""
    if image is None:
        return []
    return [image] if isinstance(image, int) else list(image)


def load_model(
    pretrained: str,
    vision_tower: str = DEFAULT_VISION_TOWER,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    *,
    scan: str | None = None,
    image_position: str | None = None,
    kernel: str = "auto",
    padding: str | None = None,
) -> VisualRWKV:
    """A VisualRWKV (or a text-only language model) from a .pth / .safetensors checkpoint, ready for inference.

    The checkpoint's family (model/families.py) decides the parts; `scan` and `image_position` default to the
    family's (VisualRWKV-6: bidirectional, middle; VisualRWKV-7: unidirectional, first, the only ones it has).
    `padding` (VisualRWKV-7 only): "exact" (default), the reference's left pads recomputed for every token, or
    "once", pads before the prompt only, then plain recurrent decoding (faster; see model/left_pad.py). A
    VisualRWKV-7 checkpoint without `vit.*` weights takes its towers from `vision_tower`: a folder laid out as the
    reference's --vision_tower_dir, or "hub" (model/vision7_files.py). Every argument is checked before the checkpoint is read, and
    the WKV kernel is probed before the vision tower is built. The weights end up in memory the model owns: a
    tensor still mapped from the file (CPU at the stored dtype) is copied, so that rewriting or truncating the
    file later never changes the model or kills the process (SIGBUS).
    """
    check_options(pretrained, vision_tower, scan, image_position, kernel)
    if padding is not None and padding not in left_pad.PADDINGS:
        raise ValueError(f"padding={padding!r}: expected one of {', '.join(left_pad.PADDINGS)}")
    device = parse_device(device)
    dtype = parse_dtype(dtype, device)
    ckpt = load_checkpoint(pretrained, check_values=False)  # checked below, once converted
    recipe = FAMILIES[ckpt.family]
    _check_family_options(recipe, scan, image_position, padding)
    # a CUDA kernel that cannot run shows here, not mid-evaluation
    resolve_backend(kernel, device, dtype, recipe.language_model.wkv_op)
    vision = None
    if recipe.vision_tower is not None:
        vision = recipe.vision_tower(vision_tower, ckpt.vit or None)
        recipe.check_projector(ckpt, vision, vision_tower)
    options = dict(
        scan=scan or recipe.default_scan, image_position=image_position or recipe.default_position, kernel=kernel
    )
    if padding is not None:
        options["padding"] = padding
    model = VisualRWKV.from_weights(recipe, ckpt.config, ckpt.rwkv, ckpt.proj_weights, vision, **options)
    model = model.to(device=device, dtype=dtype)
    own_memory(model)
    model.checkpoint_path = str(ckpt.path)
    check_weights(model, ckpt)
    return model


def _check_family_options(recipe: Recipe, scan: str | None, image_position: str | None, padding: str | None) -> None:
    """Options the checkpoint's family does not have: refused, naming what it offers."""
    if scan is not None and scan not in recipe.scans:
        raise ValueError(f"scan={scan!r}: {recipe.label} checkpoints take {' or '.join(recipe.scans)}")
    if image_position is not None and image_position not in recipe.positions:
        raise ValueError(
            f"image_position={image_position!r}: {recipe.label} checkpoints take {' or '.join(recipe.positions)}"
        )
    if padding is not None and recipe.left_pad is None:
        raise ValueError(f"padding={padding!r}: {recipe.label} checkpoints have no left padding; leave it unset")


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
