"""Random RWKV-7 (x070) language-model weights in RWKV-LM's key format, for tests and `make-tiny --family v7`.

The values sit in the ranges trained x070 models have, so that comparisons against other implementations are
not trivially small numbers: decays d = exp(-exp(w)) spread over their whole range (0.545, 1), LayerNorm weights
near 1, every matrix scaled by 1/sqrt(fan-in). Like RWKV-LM's x070 initialisation (github.com/BlinkDL/RWKV-LM,
RWKV-v7/train_temp/src/model.py, generate_init_weight), the GroupNorm weights grow with depth as
((1 + layer) / n_layer) ** 0.7 and the two matrices that write into the residual stream (att.output, ffn.value;
zero at initialisation) are smaller than the others. Without that, wide and deep random models are
ill-conditioned in fp32: a head whose first-token output y = v (k . r) is nearly zero has its rounding error
amplified up to 40-fold by the GroupNorm (eps 64e-5), layer after layer. Measured with GroupNorm weights ~1
and all matrices at 1/sqrt(fan-in): at 12 x 2048 the `rwkv` package's fp32 logits were 1.6e-3 from float64,
and at 24 x 2048 this model and that package differed by 5.6e-3; with these scales, 7e-5 from float64 at
12 x 2048 and 6e-5 between the two at 24 x 2048. Deterministic per seed.
"""

from __future__ import annotations

import math

import torch

from .config import RWKV7Config
from .tokenizer import STOP_TOKEN

# (n_layer, n_embd, (Dw, Da, Dv, Dg)) of the released VisualRWKV-7 language models and of a test model;
# the 0B4 gate rank is 128 (its checkpoint predates the rank rule of RWKV7Config.for_size)
SIZES7 = {
    "tiny": (2, 128, (32, 32, 32, 32)),
    "0b1": (12, 768, (64, 64, 32, 128)),
    "0b4": (24, 1024, (64, 64, 32, 128)),
    "1b5": (24, 2048, (96, 96, 64, 256)),
}


def size_config7(size: str) -> RWKV7Config:
    if size not in SIZES7:
        raise ValueError(f"size={size!r}: expected one of {', '.join(SIZES7)}")
    n_layer, n_embd, ranks = SIZES7[size]
    return RWKV7Config.for_size(n_layer, n_embd, ranks)


def _decay_base(n: int, randn) -> torch.Tensor:
    """w0 over the channels: from slow (d ~ 0.999) to the fastest decay the form allows (d ~ 0.55)."""
    ramp = torch.linspace(0, 1, n) ** 0.8
    return -7 + 10 * ramp + 0.3 * randn(n)


def random_rwkv7_state_dict(
    cfg: RWKV7Config,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    stop_logit: float = 0.0,
) -> dict[str, torch.Tensor]:
    """An x070 state dict (keys without prefix, as RWKV-LM saves them; layer 0 without v0/v1/v2).

    `stop_logit` > 0 gives the stop token "\\n\\n" that much extra logit at every position (the last channel of
    ln_out becomes a constant 1 that only the stop token's head row reads), so that answers end after a few
    tokens as real ones do.
    """
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    out = {}
    for key, shape in cfg.expected_shapes().items():
        name = key.rsplit(".", 1)[-1]
        if name == "w0":
            t = _decay_base(shape[-1], randn).view(shape)
        elif name in ("a0", "v0"):  # a = sigmoid(a0 + ...) and the residual mix spread over (0, 1)
            t = randn(*shape)
        elif name in ("w1", "a1", "v1", "g1"):  # LoRA down: inputs are LayerNorm-ed, fan-in C
            t = randn(*shape) / math.sqrt(shape[0])
        elif name in ("w2", "a2", "v2", "g2"):  # LoRA up: an O(1) correction
            t = randn(*shape) / math.sqrt(shape[0])
        elif name.startswith("x_"):  # token-shift lerps in [0, 1]
            t = torch.rand(*shape, generator=gen)
        elif name == "k_k":
            t = 0.85 + 0.1 * randn(*shape)
        elif name == "k_a":
            t = 1.0 + 0.2 * randn(*shape)
        elif name == "r_k":
            t = 0.5 * randn(*shape)
        elif name == "weight" and key.endswith("ln_x.weight"):
            layer = int(key.split(".")[1])
            t = ((1 + layer) / cfg.n_layer) ** 0.7 * (1 + 0.1 * randn(*shape))
        elif key.startswith(("blocks.0.ln0", "ln_out")) or ".ln" in key:  # ln0..2, ln_x bias, ln_out
            t = (1.0 if name == "weight" else 0.0) + 0.1 * randn(*shape)
        elif key == "emb.weight":
            t = randn(*shape)
        elif key == "head.weight":
            t = 3 * randn(*shape) / math.sqrt(shape[1])
        elif key.endswith(("att.output.weight", "ffn.value.weight")):  # writes into the residual stream
            t = 0.3 * randn(*shape) / math.sqrt(shape[1])
        else:  # linear layers [out, in]
            t = randn(*shape) / math.sqrt(shape[1])
        out[key] = t.to(dtype)  # one tensor at a time: a 1.5B model never sits in fp32 when bf16 is asked for
    if stop_logit:
        out["ln_out.weight"][-1], out["ln_out.bias"][-1] = 0.0, 1.0
        out["head.weight"][:, -1] = 0.0
        out["head.weight"][STOP_TOKEN, -1] = stop_logit
    return out
