"""VisualRWKV-7's left padding, with recurrent state instead of the reference's full re-runs.

The reference (github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/src/model.py, `RWKV.forward` and
`VisualRWKV.generate`) re-runs the whole sequence for every new token, each time from a zero state with
p = (16 - T % 16) % 16 rows of emb(261) ("\\n\\n") prepended, T being the sequence's current length (its WKV7 CUDA
kernel takes lengths that are multiples of 16). The pads are real context: they go through ln0 and every layer,
and because p changes with every token, "prefill once, then decode" is not the same computation.

Exact, with state (`padding=exact`, the default):
- the state after q pads, q = 0..15, is the same for every sequence: one 15-step chain of token 261 from the
  zero state gives all sixteen (`pad_states`, computed once per model, device, dtype and kernel);
- a sequence of length T reads its next-token logits from chain q(T) = (16 - T % 16) % 16: the state after q pads
  and then every row of the sequence. A chain is created when first needed, by prefilling the whole sequence so
  far from the q-pad state, and afterwards only catches up with the rows it has not seen. Most answers are a few
  tokens, so a few chains are ever made; at most sixteen per sequence.
Every sequence of a batch has its own length, pads and chains; one packed prefill per step serves all sequences
that need rows, and each row's bits do not depend on the packing (model/rowwise.py), so the batch never
changes an answer.

Faster, not exact (`padding=once`): the prompt gets its q(T) pads once (it starts from that pad state) and
decoding is plain recurrence. The first generated token equals the exact mode's; later ones see the prompt's
pads where the reference would have used another pad count, so answers longer than one token may differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .tokenizer import STOP_TOKEN

if TYPE_CHECKING:
    from .language_model import State

PADDINGS = ("exact", "once")


@dataclass(frozen=True)
class LeftPad:
    """A family's left-padding rule: rows of emb(`token`) before a sequence, up to a multiple of `multiple`."""

    token: int = STOP_TOKEN
    multiple: int = 16

    def pads(self, length: int) -> int:
        """q(T): pad rows the reference puts before a sequence of `length` rows."""
        return (-length) % self.multiple


def pad_states(model, pad: LeftPad) -> list[State]:
    """The language-model state after q pads, q = 0 .. multiple-1 (batch 1 each), from one chain of decode steps
    from the zero state. Cached on the model per (device, dtype, kernel backend), since a state's bits depend on
    them."""
    cache = model.__dict__.setdefault("_pad_states", {})
    key = (model.device, model.dtype, model.backend, pad)
    if key not in cache:
        state = model.new_state(1)
        states = [state.select([0])]
        token = torch.tensor([pad.token], device=model.device)
        for _ in range(pad.multiple - 1):
            model.raw_decode(token, state)
            states.append(state.select([0]))
        cache[key] = states
    return cache[key]


@dataclass
class Chain:
    """The state after q pads and the first `seen` rows of a sequence (batch 1)."""

    state: State
    seen: int


@dataclass
class PaddedSequence:
    """Everything a sequence has read (its rows, image starts) and its chains by pad count q."""

    parts: list[torch.Tensor] = field(default_factory=list)  # rows [n, C] in order
    images: list[int] = field(default_factory=list)  # rows where image segments start
    chains: dict[int, Chain] = field(default_factory=dict)
    length: int = 0

    def append(self, rows: torch.Tensor, images: list[int]) -> None:
        self.images += [self.length + s for s in images]
        self.parts.append(rows)
        self.length += rows.shape[0]

    def rows_from(self, start: int) -> torch.Tensor:
        """Rows [start:length]."""
        if len(self.parts) > 1:
            self.parts = [torch.cat(self.parts)]
        return self.parts[0][start:]

    def copy(self) -> PaddedSequence:
        # chains are replaced, never changed in place, so a shallow copy is an independent sequence
        return PaddedSequence(list(self.parts), list(self.images), dict(self.chains), self.length)


@dataclass
class PaddedState:
    """The state of B left-padded sequences (the State protocol of model/language_model.py)."""

    seqs: list[PaddedSequence]
    chain_bytes: int  # one chain's language-model state

    @property
    def batch_size(self) -> int:
        return len(self.seqs)

    @property
    def bytes_per_sequence(self) -> int:
        """At most one chain per pad count, and the rows (counted as one chain's worth: ~1000 rows of C)."""
        return (LeftPad().multiple + 1) * self.chain_bytes

    def select(self, index: torch.Tensor | list[int]) -> PaddedState:
        return PaddedState([self.seqs[int(i)].copy() for i in index], self.chain_bytes)

    @staticmethod
    def cat(states: list[PaddedState]) -> PaddedState:
        return PaddedState([s for st in states for s in st.seqs], states[0].chain_bytes if states else 0)


def _rows_and_images(seqs) -> list[tuple[torch.Tensor, list[int]]]:
    out = []
    for rows, image in seqs:
        out.append((rows, [] if image is None else [image] if isinstance(image, int) else list(image)))
    return out


def new_state(model, batch: int) -> PaddedState:
    """B empty sequences: no rows, no chains yet."""
    return PaddedState([PaddedSequence() for _ in range(batch)], model.new_state(1).bytes_per_sequence)


def next_logits(model, pad: LeftPad, state: PaddedState) -> list[torch.Tensor]:
    """Logits [1, vocab] of the next token of every sequence, each from its chain q(T) brought up to its length
    T: new chains prefill the whole sequence from the q-pad state, existing ones the rows they have not seen; all
    in one packed prefill."""
    starts = pad_states(model, pad)
    jobs, states, made = [], [], []
    for seq in state.seqs:
        q = pad.pads(seq.length)
        chain = seq.chains.get(q) or Chain(starts[q], 0)
        if chain.seen == seq.length:  # every call appends rows first: a caller that did not is a bug
            raise RuntimeError("left padding: a sequence asked for logits without new rows")
        rows = seq.rows_from(chain.seen)
        jobs.append((rows, [s - chain.seen for s in seq.images if s >= chain.seen]))
        states.append(chain.state)
        made.append(q)
    logits, out = model.raw_prefill(jobs, state=type(states[0]).cat(states))
    for j, (seq, q) in enumerate(zip(state.seqs, made)):
        seq.chains[q] = Chain(out.select([j]), seq.length)
    return logits


def prefill(model, pad: LeftPad, mode: str, seqs, state=None, logit_rows=None):
    """VisualRWKV.prefill for a left-padded family: (logits per sequence, state).

    exact: `state` is a PaddedState (new when None), to which the rows are appended; the logits are those of the
    next token at the new length, or with `logit_rows` (scoring, from a fresh start only) those of the given rows,
    each computed with the pads of the length it predicts from.
    once: a first turn starts every sequence from the state after its own q(T) pads; a later turn (a `state`
    given) adds nothing."""
    seqs = _rows_and_images(seqs)
    if mode == "once":
        if state is None:
            starts = pad_states(model, pad)
            lengths = [rows.shape[0] if logit_rows is None else _context(rows, r) for (rows, _), r in
                       zip(seqs, logit_rows or [None] * len(seqs))]  # fmt: skip
            first = [starts[pad.pads(n)] for n in lengths]
            state = type(first[0]).cat(first)
        return model.raw_prefill(seqs, state=state, logit_rows=logit_rows)
    if logit_rows is not None:
        if state is not None:
            raise ValueError("left padding: scoring rows (logit_rows) starts from no earlier state")
        return _score(model, pad, seqs, logit_rows), None
    state = state if state is not None else new_state(model, len(seqs))
    for seq, (rows, images) in zip(state.seqs, seqs):
        seq.append(rows, images)
    return next_logits(model, pad, state), state


def _context(rows: torch.Tensor, logit_rows: list[int] | None) -> int:
    """Scoring with padding=once: the pads of the context, i.e. of the length before the first scored row + 1."""
    return rows.shape[0] if not logit_rows else logit_rows[0] + 1


def decode(model, pad: LeftPad, mode: str, tokens: torch.Tensor, state) -> torch.Tensor:
    """VisualRWKV.decode: tokens [B] -> next-token logits [B, vocab]."""
    if mode == "once":
        return model.raw_decode(tokens, state)
    rows = model.embed_tokens(tokens)
    for seq, row in zip(state.seqs, rows.split(1)):
        seq.append(row, [])
    return torch.cat(next_logits(model, pad, state))


def _score(model, pad: LeftPad, seqs, logit_rows: list[list[int]]) -> list[torch.Tensor]:
    """Logits of rows r of each sequence, each as the reference would compute them: the rows up to r after
    q(r + 1) pads. One prefill per (sequence, pad count) needed, all packed into one call."""
    starts = pad_states(model, pad)
    jobs, states, picks = [], [], []  # picks: per job, (sequence, positions in its logit_rows, rows)
    for i, ((rows, images), wanted) in enumerate(zip(seqs, logit_rows)):
        by_q: dict[int, list[int]] = {}
        for pos, r in enumerate(wanted):
            by_q.setdefault(pad.pads(r + 1), []).append(pos)
        for q, positions in by_q.items():
            last = max(wanted[p] for p in positions)
            jobs.append((rows[: last + 1], [s for s in images if s <= last]))
            states.append(starts[q])
            picks.append((i, positions, [wanted[p] for p in positions]))
    if not jobs:
        return [rows.new_zeros(0, model.config.vocab_size) for rows, _ in seqs]
    logits, _ = model.raw_prefill(jobs, state=type(states[0]).cat(states), logit_rows=[p[2] for p in picks])
    out: list[torch.Tensor | None] = [None] * len(seqs)
    for (i, positions, _), lg in zip(picks, logits):
        if out[i] is None:
            out[i] = lg.new_empty(len(logit_rows[i]), lg.shape[-1])
        out[i][positions] = lg
    return out
