"""What VisualRWKV needs from a language model (RWKV-6 in model/rwkv6.py, RWKV-7 in model/rwkv7.py; a new family
adds its own class on `RWKVLanguageModel`, which holds the plumbing every RWKV family shares).

VisualRWKV owns the image scan and drives the layers itself: it embeds the prompt's text with `embed_tokens`,
splices the image rows in, then calls `block` layer by layer, reordering a layer's rows (and the per-row carry
the layers hand on, e.g. RWKV-7's `v_first`) where the scan says so, and reads `logits` of the rows it needs.
Every sequence of a packed batch has its own recurrent state, so packing never changes a sequence's result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from visualrwkv_eval import kernels

from .packing import Carry, Packing
from .rowwise import column_major_, linear


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

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Rows [n, C] -> logits [n, vocab], each row's independent of the others."""
        ...


class RWKVLanguageModel(nn.Module):
    """The parts of an RWKV language model that do not depend on its time mix: token embedding, the stack of
    blocks, the output LayerNorm and head, the WKV backend, the CPU weight layout and the forward over all
    layers. A family sets `wkv_op` and `state_type` and defines `block` (one layer, with its carry)."""

    wkv_op: str  # the kernels registry's operation (kernels.get)
    state_type: type  # has zeros(config, batch, dtype, device) -> State

    def __init__(self, config, make_block: Callable[[object, int], nn.Module]):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(make_block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.use_backend("torch")

    def use_backend(self, backend: str) -> None:
        """Run the WKV recurrence on `backend` ("torch" | "cupy" | "c", as kernels.resolve_backend decides);
        `backend` is the one last picked (VisualRWKV re-binds when it differs)."""
        self.backend, self.wkv_kernel = backend, kernels.get(self.wkv_op, backend)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [T] -> rows [T, C]."""
        return self.emb(ids)

    def new_state(self, batch: int, dtype: torch.dtype | None = None, device=None) -> State:
        """Zero state of `batch` sequences, in the head's dtype and device unless given."""
        w = self.head.weight
        return self.state_type.zeros(self.config, batch, dtype or w.dtype, device or w.device)

    def block(
        self, layer: int, x: torch.Tensor, state: State, pack: Packing, carry: Carry = ()
    ) -> tuple[torch.Tensor, Carry]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: State, pack: Packing) -> torch.Tensor:
        """Embeddings [T, C] -> final hidden rows [T, C], layer by layer from `state` (updated in place), every
        layer in row order (no image scan)."""
        self.cpu_layout_()
        carry: Carry = ()
        for i in range(len(self.blocks)):
            x, carry = self.block(i, x, state, pack, carry)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of rows of `hidden` (rows of different sequences: the row kernel on CPU, model/rowwise.py)."""
        self.cpu_layout_()
        return linear(self.ln_out(hidden), self.head.weight, rows=True)

    def cpu_layout_(self) -> None:
        """On CPU, every matrix in the layout whose products are row-invariant and fast (rowwise.py); once,
        and again after a move back from another device (the head's strides tell)."""
        head = self.head.weight
        if head.device.type == "cpu" and head.is_contiguous():
            column_major_(m.weight for m in self.modules() if isinstance(m, nn.Linear))
