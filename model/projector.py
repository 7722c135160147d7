"""Projectors: vision-tower features [N, D] -> language-model rows [N, n_embd].

VisualRWKV-6 maps every feature with one bias-free linear layer (arXiv 2406.13362, section 3;
github.com/howard-hou/VisualRWKV, VisualRWKV-v6/v6.0/src/model.py: `self.proj = nn.Linear(vision_dim, n_embd,
bias=False)`), saved under the key `proj.weight`.
"""

from __future__ import annotations

import torch
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
