"""RWKV-6 (x060) hyper-parameters, inferred from checkpoint shapes, and the key/shape table they imply."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

HEAD_SIZE_DIVISOR = 8  # GroupNorm eps = 1e-5 * 8**2 (github.com/howard-hou/VisualRWKV, VisualRWKV-v6/v6.0/src/model.py)
WORLD_VOCAB_SIZE = 65536  # emb / head rows of every RWKV World model (token ids 1..65529 in use)


def _outer_shapes(vocab_size: int, C: int) -> dict[str, tuple[int, ...]]:
    """The keys every RWKV-LM family shares around its blocks: embedding, layer 0's ln0, output LayerNorm, head."""
    return {
        "emb.weight": (vocab_size, C),
        "blocks.0.ln0.weight": (C,),
        "blocks.0.ln0.bias": (C,),
        "ln_out.weight": (C,),
        "ln_out.bias": (C,),
        "head.weight": (vocab_size, C),
    }


@dataclass(frozen=True)
class RWKV6Config:
    n_layer: int
    n_embd: int
    n_head: int
    head_size: int
    dim_ffn: int
    d_mix: int  # ddlerp LoRA rank (32; 64 for n_embd >= 4096)
    d_decay: int  # decay LoRA rank (64; 128 for n_embd >= 4096)
    vocab_size: int = WORLD_VOCAB_SIZE

    @property
    def dim_att(self) -> int:
        return self.n_head * self.head_size

    @staticmethod
    def for_size(n_layer: int, n_embd: int, vocab_size: int = WORLD_VOCAB_SIZE) -> RWKV6Config:
        """The shapes RWKV-LM builds for a given depth and width (github.com/BlinkDL/RWKV-LM, RWKV-v5/src/model.py)."""
        wide = n_embd >= 4096
        return RWKV6Config(
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_embd // 64,
            head_size=64,
            dim_ffn=int((n_embd * 3.5) // 32 * 32),
            d_mix=64 if wide else 32,
            d_decay=128 if wide else 64,
            vocab_size=vocab_size,
        )

    @staticmethod
    def from_state_dict(sd: dict[str, torch.Tensor]) -> RWKV6Config:
        """Read every dimension from the (unprefixed) RWKV state dict, as RWKV's own loaders do."""
        layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
        if not layers:
            raise KeyError("blocks.0.*")
        faaaa = sd["blocks.0.att.time_faaaa"]
        return RWKV6Config(
            n_layer=max(layers) + 1,
            n_embd=sd["emb.weight"].shape[1],
            n_head=faaaa.shape[0],
            head_size=faaaa.shape[1],
            dim_ffn=sd["blocks.0.ffn.key.weight"].shape[0],
            d_mix=sd["blocks.0.att.time_maa_w2"].shape[1],
            d_decay=sd["blocks.0.att.time_decay_w1"].shape[1],
            vocab_size=sd["emb.weight"].shape[0],
        )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key of an x060 RWKV-LM state dict and its shape (as RWKV-LM's trainer saves it; the `rwkv` pip
        package's RWKV_x060 loader reads the same names)."""
        C, A, F, H, N = self.n_embd, self.dim_att, self.dim_ffn, self.n_head, self.head_size
        shapes = _outer_shapes(self.vocab_size, C)
        for i in range(self.n_layer):
            p = f"blocks.{i}."
            for ln in ("ln1", "ln2"):
                shapes[f"{p}{ln}.weight"] = shapes[f"{p}{ln}.bias"] = (C,)
            for name in ("x", "w", "k", "v", "r", "g"):
                shapes[f"{p}att.time_maa_{name}"] = (1, 1, C)
            shapes[f"{p}att.time_maa_w1"] = (C, 5 * self.d_mix)
            shapes[f"{p}att.time_maa_w2"] = (5, self.d_mix, C)
            shapes[f"{p}att.time_decay"] = (1, 1, A)
            shapes[f"{p}att.time_decay_w1"] = (C, self.d_decay)
            shapes[f"{p}att.time_decay_w2"] = (self.d_decay, A)
            shapes[f"{p}att.time_faaaa"] = (H, N)
            for name in ("receptance", "key", "value", "gate"):
                shapes[f"{p}att.{name}.weight"] = (A, C)
            shapes[f"{p}att.output.weight"] = (C, A)
            shapes[f"{p}att.ln_x.weight"] = shapes[f"{p}att.ln_x.bias"] = (A,)
            shapes[f"{p}ffn.time_maa_k"] = shapes[f"{p}ffn.time_maa_r"] = (1, 1, C)
            shapes[f"{p}ffn.key.weight"] = (F, C)
            shapes[f"{p}ffn.receptance.weight"] = (C, C)
            shapes[f"{p}ffn.value.weight"] = (C, F)
        return shapes


# Layer 0's value-residual LoRA: VisualRWKV-7 and RWKV-LM's code of December 2024 do not create it, RWKV-LM's
# later training code (RWKV-v7/train_temp/src/model.py) creates it in every layer, unused in layer 0 (its value
# is v_first itself); the `rwkv` package replaces whatever the file holds there by empty tensors. Ignored.
X070_UNUSED_KEYS = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def _lora_rank(factor: float, size: float) -> int:
    """RWKV-7's LoRA rank rule: a multiple of 32, at least 32 (Python's round, as the reference uses)."""
    return max(32, round(factor * size / 32) * 32)


@dataclass(frozen=True)
class RWKV7Config:
    """RWKV-7 "Goose" (x070) hyper-parameters (arXiv 2503.14456; BlinkDL/RWKV-LM RWKV-v7).

    The four LoRA ranks are read from a checkpoint's shapes: the rule in the reference's code changed after some
    checkpoints were trained (VisualRWKV-v0700-0B4 has gate rank 128 where the later rule gives 160)."""

    n_layer: int
    n_embd: int
    n_head: int
    head_size: int
    dim_ffn: int  # 4 * n_embd
    d_decay: int  # w1 / w2 (Dw)
    d_aaa: int  # a1 / a2 (Da), the in-context learning rate
    d_mv: int  # v1 / v2 (Dv), the value residual; absent in layer 0
    d_gate: int  # g1 / g2 (Dg)
    vocab_size: int = WORLD_VOCAB_SIZE

    @property
    def dim_att(self) -> int:
        return self.n_head * self.head_size

    @staticmethod
    def for_size(
        n_layer: int, n_embd: int, ranks: tuple[int, int, int, int] | None = None, vocab_size: int = WORLD_VOCAB_SIZE
    ) -> RWKV7Config:
        """The shapes of a depth and width; `ranks` (Dw, Da, Dv, Dg), by default the rule of the x070 code since
        February 2025 (github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/src/model.py, RWKV_Tmix_x070)."""
        if ranks is None:
            root = n_embd**0.5
            ranks = (_lora_rank(1.8, root), _lora_rank(1.8, root), _lora_rank(1.3, root), _lora_rank(0.6, n_embd**0.8))
        return RWKV7Config(n_layer, n_embd, n_embd // 64, 64, 4 * n_embd, *ranks, vocab_size=vocab_size)

    @staticmethod
    def from_weights(sd: dict[str, torch.Tensor]) -> RWKV7Config:
        """Every dimension from an x070 state dict: keys as RWKV-LM saves them (`blocks.0.att.x_r`, ...) or with
        VisualRWKV-7's `rwkv.` prefix. Head count and size from `r_k` [H, N]; the value-residual rank from layer
        1 (layer 0 has no v0/v1/v2)."""
        pre = "rwkv." if "rwkv.emb.weight" in sd else ""
        layers = {int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(pre)}blocks\.(\d+)\.", k))}
        if not layers:
            raise KeyError(f"{pre}blocks.0.*")
        att = f"{pre}blocks.0.att."
        n_head, head_size = sd[att + "r_k"].shape
        mv = sd.get(f"{pre}blocks.1.att.v1", sd.get(f"{pre}blocks.0.att.v1"))
        return RWKV7Config(
            n_layer=max(layers) + 1,
            n_embd=sd[f"{pre}emb.weight"].shape[1],
            n_head=n_head,
            head_size=head_size,
            dim_ffn=sd[f"{pre}blocks.0.ffn.key.weight"].shape[0],
            d_decay=sd[att + "w1"].shape[1],
            d_aaa=sd[att + "a1"].shape[1],
            d_mv=32 if mv is None else mv.shape[1],  # a 1-layer model has no value residual: any rank fits
            d_gate=sd[att + "g1"].shape[1],
            vocab_size=sd[f"{pre}emb.weight"].shape[0],
        )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key of an x070 RWKV-LM state dict (no prefix) and its shape."""
        C, A, F, H, N = self.n_embd, self.dim_att, self.dim_ffn, self.n_head, self.head_size
        shapes = _outer_shapes(self.vocab_size, C)
        loras = {"w": self.d_decay, "a": self.d_aaa, "v": self.d_mv}
        for i in range(self.n_layer):
            p0 = f"blocks.{i}."
            p = p0 + "att."
            for ln in ("ln1", "ln2"):
                shapes[f"{p0}{ln}.weight"] = shapes[f"{p0}{ln}.bias"] = (C,)
            for name in ("r", "w", "k", "v", "a", "g"):
                shapes[f"{p}x_{name}"] = (1, 1, C)
            for name, rank in loras.items():
                if name == "v" and i == 0:
                    continue  # layer 0's v is the value residual's source, not mixed
                shapes[f"{p}{name}0"], shapes[f"{p}{name}1"], shapes[f"{p}{name}2"] = (1, 1, A), (C, rank), (rank, A)
            shapes[f"{p}g1"], shapes[f"{p}g2"] = (C, self.d_gate), (self.d_gate, A)
            shapes[f"{p}k_k"] = shapes[f"{p}k_a"] = (1, 1, A)
            shapes[f"{p}r_k"] = (H, N)
            for name in ("receptance", "key", "value"):
                shapes[f"{p}{name}.weight"] = (A, C)
            shapes[f"{p}output.weight"] = (C, A)
            shapes[f"{p}ln_x.weight"] = shapes[f"{p}ln_x.bias"] = (A,)
            shapes[f"{p0}ffn.x_k"] = (1, 1, C)
            shapes[f"{p0}ffn.key.weight"] = (F, C)
            shapes[f"{p0}ffn.value.weight"] = (C, F)
        return shapes
