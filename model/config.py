"""RWKV-6 (x060) hyper-parameters, inferred from checkpoint shapes, and the key/shape table they imply."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

HEAD_SIZE_DIVISOR = 8  # GroupNorm eps = 1e-5 * 8**2 (spec 1.4)
WORLD_VOCAB_SIZE = 65536  # emb / head rows of every RWKV World model (token ids 1..65529 in use)


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
        """The shapes RWKV-LM builds for a given depth and width (spec 1.4)."""
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
        """Every key of an x060 RWKV-LM state dict and its shape (spec 1.6)."""
        C, A, F, H, N = self.n_embd, self.dim_att, self.dim_ffn, self.n_head, self.head_size
        shapes: dict[str, tuple[int, ...]] = {
            "emb.weight": (self.vocab_size, C),
            "blocks.0.ln0.weight": (C,),
            "blocks.0.ln0.bias": (C,),
            "ln_out.weight": (C,),
            "ln_out.bias": (C,),
            "head.weight": (self.vocab_size, C),
        }
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
