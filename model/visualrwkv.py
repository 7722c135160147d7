"""VisualRWKV-6: CLIP tower -> bias-free projector -> image rows spliced into the prompt -> RWKV-6 with the
image scan; prefill layer by layer over packed prompts, then recurrent decode (spec 0, 1.2-1.3, 2.4)."""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from visualrwkv_eval.kernels import KERNELS, resolve_backend

from .checkpoint import CheckpointError, load_checkpoint
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
        return resolve_backend(self.kernel, self.device)

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
        return self.rwkv.logits(hidden)

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
        """The answer to `context` (the question as lmms-eval builds it) about the first of `images`."""
        from .generate import GenerationRequest, generate_batch

        request = GenerationRequest(context, (images or [None])[0], max_new_tokens, tuple(until or ()), **sampling)
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
    """A VisualRWKV (or text-only RWKV-6) from a .pth / .safetensors checkpoint, ready for inference."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    resolve_backend(kernel, device)
    ckpt = load_checkpoint(pretrained)
    vision = None if ckpt.proj is None else build_vision_tower(vision_tower, ckpt.vit or None)
    if vision is not None and ckpt.proj.shape[1] != vision.hidden_size:
        raise CheckpointError(
            f"{ckpt.path}: proj.weight takes {ckpt.proj.shape[1]} features but the vision tower "
            f"{vision_tower} gives {vision.hidden_size}"
        )
    options = dict(scan=scan, image_position=image_position, kernel=kernel)
    model = VisualRWKV.from_weights(ckpt.config, ckpt.rwkv, ckpt.proj, vision, **options)
    return model.to(device=device, dtype=dtype)
