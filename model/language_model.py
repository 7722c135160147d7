"""What VisualRWKV needs from a language model (RWKV-6 in model/rwkv6.py; a new family adds its own class).

VisualRWKV owns the image scan and drives the layers itself: it embeds the prompt's text with `embed_tokens`,
splices the image rows in, then calls `block` layer by layer, reordering a layer's rows (and the per-row carry
the layers hand on, e.g. RWKV-7's `v_first`) where the scan says so, and reads `logits` of the rows it needs.
Every sequence of a packed batch has its own recurrent state, so packing never changes a sequence's result.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .packing import Carry, Packing


class State(Protocol):
    """The recurrent state of B sequences."""

    @property
    def batch_size(self) -> int: ...

    @property
    def bytes_per_sequence(self) -> int:
        """Memory the state of one sequence takes."""
        ...

    def select(self, index: torch.Tensor | list[int]) -> State:
        """The states of the sequences at `index`, copied."""
        ...

    @staticmethod
    def cat(states: list[State]) -> State: ...


class LanguageModel(Protocol):
    wkv_op: str  # the kernels registry's operation: resolve_backend probes it, use_backend picks it
    backend: str  # the backend use_backend last picked
    blocks: torch.nn.ModuleList  # len(blocks) layers
    config: object  # n_layer, n_embd, dim_ffn, vocab_size at least

    def use_backend(self, backend: str) -> None:
        """Run the recurrence on the WKV implementation of `backend` (kernels.get(wkv_op, backend))."""
        ...

    def cpu_layout_(self) -> None:
        """Called before a forward: lay weights out for the device (may do nothing)."""
        ...

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [T] -> rows [T, C]."""
        ...

    def new_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> State: ...

    def block(
        self, layer: int, x: torch.Tensor, state: State, pack: Packing, carry: Carry = ()
    ) -> tuple[torch.Tensor, Carry]:
        """Rows [T, C] through one layer, updating `state` in place -> (rows, carry for the next layer).
        The first layer gets an empty carry; a layer may return a longer one (RWKV-7: (v_first,))."""
        ...

    def logits(self, hidden: torch.Tensor, decode: bool = False) -> torch.Tensor:
        """Rows [n, C] -> logits [n, vocab]; `decode`: rows of a decode step."""
        ...
