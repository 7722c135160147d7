"""Projectors: vision-tower features [N, D] -> language-model rows [N, n_embd].

VisualRWKV-6 maps every feature with one bias-free linear layer (arXiv 2406.13362, section 3;
github.com/howard-hou/VisualRWKV, VisualRWKV-v6/v6.0/src/model.py: `self.proj = nn.Linear(vision_dim, n_embd,
bias=False)`), saved under the key `proj.weight`. VisualRWKV-7's releases use a context-gated MLP,
z = LayerNorm(W_o (f * sigmoid(W_g f))) (VisualRWKV-v7/v7.00/src/model.py: `MLPWithContextGating`), keys
`proj.gate.weight` [D, D], `proj.o_proj.weight` [n_embd, D], `proj.ln_v.{weight,bias}` [n_embd]; its
`--proj_type linear` variant is the LinearProjector. v7 may average-pool the token grid first (`adaptive_pool`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .rowwise import linear


class LinearProjector(nn.Module):
    """The bias-free linear projector of VisualRWKV-6: weight [n_embd, D] (state-dict key `weight`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """[N, D] -> [N, n_embd], each row on its own (rowwise.linear: the batch never changes a row)."""
        return linear(feats, self.weight)

    @staticmethod
    def from_weights(weights: dict[str, torch.Tensor]) -> LinearProjector:
        """Over the checkpoint's `proj.*` tensors (keys without the prefix), assigned, not copied."""
        out_features, in_features = weights["weight"].shape
        with torch.device("meta"):
            proj = LinearProjector(in_features, out_features)
        proj.load_state_dict(weights, assign=True)
        return proj


LN_EPS = 1e-5  # the gated projector's LayerNorm (nn.LayerNorm default)


class ContextGatedProjector(nn.Module):
    """VisualRWKV-7's projector: [N, D] tower features -> [N, n_embd] rows, LN(W_o (f * sigmoid(W_g f)))."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.gate = nn.Linear(in_features, in_features, bias=False)
        self.o_proj = nn.Linear(in_features, out_features, bias=False)
        self.ln_v = nn.LayerNorm(out_features, eps=LN_EPS)

    @property
    def in_features(self) -> int:
        return self.gate.weight.shape[1]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Each row on its own (rowwise.linear: the batch never changes a row)."""
        gated = feats * torch.sigmoid(linear(feats, self.gate.weight))
        return self.ln_v(linear(gated, self.o_proj.weight))

    @staticmethod
    def from_weights(weights: dict[str, torch.Tensor]) -> ContextGatedProjector:
        """Over the checkpoint's `proj.*` tensors (keys without the prefix), assigned, not copied."""
        want = {"gate.weight", "o_proj.weight", "ln_v.weight", "ln_v.bias"}
        if weights.keys() != want:
            raise ValueError(
                f"context-gated projector: expected proj.{{{', '.join(sorted(want))}}}, got "
                f"{', '.join('proj.' + k for k in sorted(weights))}"
            )
        d = weights["gate.weight"].shape[-1]
        n_embd = weights["o_proj.weight"].shape[0]
        shapes = {"gate.weight": (d, d), "o_proj.weight": (n_embd, d), "ln_v.weight": (n_embd,), "ln_v.bias": (n_embd,)}
        wrong = [f"proj.{k} is {list(weights[k].shape)}, expected {list(s)}" for k, s in shapes.items()]
        wrong = [w for w, (k, s) in zip(wrong, shapes.items()) if tuple(weights[k].shape) != s]
        if wrong:
            raise ValueError(f"context-gated projector: wrong shape: {'; '.join(wrong)}")
        with torch.device("meta"):
            proj = ContextGatedProjector(d, n_embd)
        proj.load_state_dict(weights, assign=True)
        return proj


def adaptive_pool(feats: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[B, g*g, D] row-major grid -> [B, num_tokens, D] by AdaptiveAvgPool2d(sqrt(num_tokens)), as the reference
    pools before projecting. The released models keep all 1024 tokens of the 32x32 grid: the identity."""
    b, t, d = feats.shape
    if num_tokens == t:
        return feats
    g, side = math.isqrt(t), math.isqrt(num_tokens)
    if g * g != t or side * side != num_tokens or num_tokens > t:
        raise ValueError(
            f"image tokens: cannot pool {t} tower tokens to {num_tokens} (both must be square numbers, "
            f"{num_tokens} <= {t})"
        )
    grid = feats.view(b, g, g, d).permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(grid, side).permute(0, 2, 3, 1).reshape(b, num_tokens, d)


def build_projector(weights: dict[str, torch.Tensor]) -> nn.Module:
    """The projector a VisualRWKV-7 checkpoint holds, told by its keys: `proj.weight` alone is the linear variant
    (v7's --proj_type linear), `proj.{gate,o_proj,ln_v}.*` the context-gated MLP of the releases."""
    if weights.keys() == {"weight"}:
        return LinearProjector.from_weights(weights)
    return ContextGatedProjector.from_weights(weights)


def projector_in_features(weights: dict[str, torch.Tensor]) -> int:
    """The feature width the checkpoint's projector takes (3200 for the releases)."""
    w = weights.get("weight", weights.get("gate.weight"))
    if w is None:
        raise ValueError(
            f"projector: neither proj.weight nor proj.gate.weight among proj.{{{', '.join(sorted(weights))}}}"
        )
    return w.shape[-1]


def check_projector(ckpt, vision, tower: str) -> None:
    """The checkpoint's projector must take the tower's features (ckpt: a Checkpoint with `proj_weights`)."""
    from .checkpoint import CheckpointError

    d = projector_in_features(ckpt.proj_weights)
    if d != vision.hidden_size:
        raise CheckpointError(
            f"{ckpt.path}: the projector takes {d} features but the vision tower {tower} gives {vision.hidden_size}"
        )


def random_projector_weights(
    in_features: int, n_embd: int, seed: int = 0, gated: bool = True, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random `proj.*` tensors (keys without the prefix), deterministic per seed, outputs O(1)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    if not gated:
        return {"weight": (rand(n_embd, in_features) / math.sqrt(in_features)).to(dtype)}
    w = {
        "gate.weight": rand(in_features, in_features) / math.sqrt(in_features),
        "o_proj.weight": rand(n_embd, in_features) / math.sqrt(in_features),
        "ln_v.weight": 1 + 0.1 * rand(n_embd),
        "ln_v.bias": 0.1 * rand(n_embd),
    }
    return {k: v.to(dtype) for k, v in w.items()}
