"""Batched generation and log-likelihood on VisualRWKV: one packed prefill, then recurrent decode of all
unfinished sequences together (O(1) work per new token), the reference's stop rule and answer cut.

A conversation can go on after an answer: `Conversation` keeps each sequence's recurrent state, so a
further user turn is prefilled on top of it instead of re-reading the whole dialogue.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image

from .prompt import user_turn
from .tokenizer import STOP_TOKEN

if TYPE_CHECKING:  # annotations only: visualrwkv.py imports this module (VisualRWKV.generate)
    from .language_model import State
    from .visualrwkv import VisualRWKV


@dataclass
class GenerationRequest:
    context: str  # the question as lmms-eval builds it; the template is applied here
    # one image, or several in order (families with several image slots, VisualRWKV-7; others use the first)
    image: Image.Image | list[Image.Image] | None = None
    max_new_tokens: int = 128
    until: tuple[str, ...] = ()
    temperature: float = 0.0  # 0: greedy (the reference)
    top_p: float = 1.0
    seed: int = 0
    # [n, ...] from model.preprocess(images), made ahead of the batch (an image pipeline); used instead
    # of `image`, with the same result
    pixels: torch.Tensor | None = None
    label: str = ""  # who asked (the adapter: "<task> doc <id>"), named in errors

    def __post_init__(self) -> None:
        check_request(self)

    @property
    def visual(self) -> Image.Image | torch.Tensor | None:
        return self.pixels if self.pixels is not None else self.image


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_request(req: GenerationRequest) -> None:
    """Refuse settings that can only give empty or garbage answers, naming the argument and what is allowed:
    a setting that is wrong is wrong for every document, so it must fail before the first answer."""
    if not isinstance(req.context, str):
        raise TypeError(f"context: expected a str, got {type(req.context).__name__}")
    n = req.max_new_tokens
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"max_new_tokens={n!r}: expected a whole number >= 1")
    if not isinstance(req.until, tuple) or not all(isinstance(u, str) for u in req.until):
        raise TypeError(f"until={req.until!r}: expected a tuple of strings")
    if not _is_real(req.temperature) or not math.isfinite(req.temperature) or req.temperature < 0:
        raise ValueError(f"temperature={req.temperature!r}: expected a finite number >= 0 (0: greedy)")
    if not _is_real(req.top_p) or not 0 <= req.top_p <= 1:
        raise ValueError(f"top_p={req.top_p!r}: expected a number in [0, 1] (1: no nucleus cut)")
    if isinstance(req.seed, bool) or not isinstance(req.seed, numbers.Integral):
        raise TypeError(f"seed={req.seed!r}: expected an int")
    images = req.image if isinstance(req.image, list) else [req.image]
    if req.image is not None and not (images and all(isinstance(im, Image.Image) for im in images)):
        raise TypeError(
            f"image: expected a PIL image, a non-empty list of them or None, got {type(req.image).__name__}"
        )


class NonFiniteLogitsError(FloatingPointError):
    """The model produced NaN or inf logits: no answer can be read from them, and a garbage answer would still
    be scored, so the run stops. `labels` name the requests (their `label`, else their index in the batch)."""

    def __init__(self, labels: list[str], at: str, dtype: torch.dtype):
        self.labels = labels
        hint = " (float16 overflows in large models: try dtype=bfloat16)" if dtype == torch.float16 else ""
        super().__init__(
            f"non-finite logits (NaN or inf) for {', '.join(labels)} {at}{hint}: "
            "the model's numbers are broken, so no answer is given"
        )


@dataclass
class Generation:
    text: str
    prompt_tokens: int  # rows prefilled, image rows included
    new_tokens: list[int]
    error: str | None = None  # why the request could not be run (its image could not be processed)


@dataclass
class BatchStats:
    """Where a batch's time went (accumulated over calls; CUDA work is synchronised before reading clocks)."""

    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    def clock(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()


@dataclass
class Conversation:
    """Recurrent states after a batch of answers, ready for a further user turn."""

    state: State  # one sequence per request that ran
    rows: list[int]  # request index -> row of `state` (-1: no state: it failed or has ended)
    pending: list[list[int]] = field(default_factory=list)  # generated tokens the state has not consumed yet

    def end(self, request: int) -> None:
        """Conversation `request` is over: later turns skip it (continue_batch answers it with an error)."""
        self.rows[request] = -1

    @property
    def ongoing(self) -> list[int]:
        """The requests that can take a further turn."""
        return [i for i, row in enumerate(self.rows) if row >= 0]


def answer_text(model: VisualRWKV, ids: list[int], until: tuple[str, ...]) -> str:
    """The reference answer: decoded text before the first "\\n\\n" (and any `until` string), stripped."""
    raw = model.tokenizer.decode_bytes(ids)
    for stop in ("\n\n", *until):
        if stop:
            cut = raw.find(stop.encode("utf-8"))
            raw = raw if cut < 0 else raw[:cut]
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return "\ufffd"  # the reference's decode of invalid UTF-8


def image_features(model: VisualRWKV, images: list[Image.Image | list[Image.Image] | torch.Tensor | None]):
    """Projected features per request (None where there is no image) and an error message per failed request.
    A request's image is a PIL image, a list of them, or the pixels already preprocessed ([n, ...],
    model.preprocess); its features are [tokens, n_embd] for one image, [n, tokens, n_embd] for a list or n > 1."""
    feats: list[torch.Tensor | None] = [None] * len(images)
    errors: list[str | None] = [None] * len(images)
    pixels, where = [], []
    for i, im in enumerate(images):
        if im is None:
            continue
        try:
            pixels.append(
                im if isinstance(im, torch.Tensor) else model.preprocess(im if isinstance(im, list) else [im])
            )
            where.append(i)
        except Exception as e:  # a broken image must not take the batch down with it
            errors[i] = f"{type(e).__name__}: {e}"
    if pixels:
        encoded = model.encode_pixels(torch.cat(pixels)).split([p.shape[0] for p in pixels])
        for j, i in enumerate(where):
            many = isinstance(images[i], list) or encoded[j].shape[0] > 1
            feats[i] = encoded[j] if many else encoded[j][0]
    return feats, errors


def num_images(feats: torch.Tensor | None) -> int:
    """Images behind a request's features (image_features): 0, 1 ([tokens, n_embd]) or n ([n, tokens, n_embd])."""
    return 0 if feats is None else feats.shape[0] if feats.dim() == 3 else 1


def _usable(model: VisualRWKV, image):
    """The images of a request the model takes: VisualRWKV-6 the first of a list, VisualRWKV-7 all."""
    limit = getattr(model, "max_images", 1)
    if isinstance(image, list) and limit is not None:
        image = image[:limit]
        return image[0] if limit == 1 else image
    if isinstance(image, torch.Tensor) and limit is not None:
        return image[:limit]
    return image


def _next_tokens(logits: torch.Tensor, requests: list[GenerationRequest], generators) -> tuple[list[int], list[int]]:
    """The next token of each sequence, and the rows whose logits are not all finite (never answered)."""
    # the finiteness flags travel with the greedy tokens: one device-to-host copy per step, as before
    greedy, finite = torch.stack([logits.argmax(-1), torch.isfinite(logits).all(-1).long()]).tolist()
    bad = [i for i, ok in enumerate(finite) if not ok]
    if bad:
        return greedy, bad
    out = []
    for i, req in enumerate(requests):
        if req.temperature <= 0:
            out.append(greedy[i])
            continue
        probs = torch.softmax(logits[i].float().cpu() / req.temperature, -1)
        if req.top_p < 1.0:
            sorted_p, idx = probs.sort(descending=True)
            drop = sorted_p.cumsum(0) - sorted_p >= req.top_p  # keep the smallest head reaching top_p
            drop[0] = False  # and at least the most likely token, as HF transformers does: top_p 0 is top-1
            probs[idx[drop]] = 0.0
        out.append(int(torch.multinomial(probs, 1, generator=generators[i])))
    return out, []


def _hit_until(model: VisualRWKV, ids: list[int], until: tuple[str, ...]) -> bool:
    if not until:
        return False
    tail = model.tokenizer.decode_bytes(ids[-64:])  # an until string is far shorter than 64 tokens
    return any(s and s.encode("utf-8") in tail for s in until)


def _decode(model: VisualRWKV, requests, logits: torch.Tensor, state: State, keep_state: bool):
    """Decode all sequences together, dropping each as it finishes. Returns the new tokens per request and,
    with `keep_state`, each sequence's final state and the tokens it has not consumed."""
    generators = [torch.Generator().manual_seed(r.seed) for r in requests]
    outputs: list[list[int]] = [[] for _ in requests]
    finals: list[State | None] = [None] * len(requests)
    pending: list[list[int]] = [[] for _ in requests]
    active = list(range(len(requests)))
    while active:
        tokens, bad = _next_tokens(logits, [requests[i] for i in active], [generators[i] for i in active])
        if bad:
            labels = [requests[active[s]].label or f"request {active[s]} of the batch" for s in bad]
            raise NonFiniteLogitsError(labels, f"at generated token {len(outputs[active[bad[0]]]) + 1}", model.dtype)
        keep = []
        for slot, (i, tok) in enumerate(zip(active, tokens)):
            req = requests[i]
            if len(outputs[i]) >= req.max_new_tokens:
                done = True
            elif tok == STOP_TOKEN:
                done, pending[i] = True, [tok]
            else:
                outputs[i].append(tok)
                done = len(outputs[i]) >= req.max_new_tokens or _hit_until(model, outputs[i], req.until)
                pending[i] = [tok]
            if not done:
                keep.append(slot)
            elif keep_state:
                finals[i] = state.select([slot])
        if not keep:
            break
        if len(keep) < len(active):
            state = state.select(keep)
        active = [active[s] for s in keep]
        logits = model.decode(torch.tensor([tokens[s] for s in keep]), state)
    return outputs, finals, pending


def _answer(
    model: VisualRWKV, requests, ok: list[int], seqs, state, keep_state: bool, results: list, stats: BatchStats
) -> Conversation | None:
    """Prefill `seqs` (one per request index in `ok`) from `state`, decode, and fill `results`."""
    start = stats.clock(model.device)
    logits, state = model.prefill(seqs, state=state)
    prefilled = stats.clock(model.device)
    outs, finals, pending = _decode(model, [requests[i] for i in ok], torch.cat(logits), state, keep_state)
    stats.prefill_seconds += prefilled - start
    stats.decode_seconds += stats.clock(model.device) - prefilled
    for j, i in enumerate(ok):
        results[i] = Generation(answer_text(model, outs[j], requests[i].until), seqs[j][0].shape[0], outs[j])
    if not keep_state:
        return None
    rows = {i: j for j, i in enumerate(ok)}
    return Conversation(type(finals[0]).cat(finals), [rows.get(i, -1) for i in range(len(requests))], pending)


@torch.inference_mode()
def generate_batch(
    model: VisualRWKV, requests: list[GenerationRequest], stats: BatchStats | None = None
) -> list[Generation]:
    """Answer every request; the batch never changes any answer (each sequence keeps its own state).
    `stats` receives the time spent in prefill (image encoding included) and in decode."""
    return _first_turn(model, requests, False, stats)[0]


@torch.inference_mode()
def start_conversation(
    model: VisualRWKV, requests: list[GenerationRequest], stats: BatchStats | None = None
) -> tuple[list[Generation], Conversation]:
    """As generate_batch, and the `Conversation` to continue with `continue_batch`."""
    return _first_turn(model, requests, True, stats)


def _first_turn(model: VisualRWKV, requests, keep_state: bool, stats: BatchStats | None):
    stats = stats or BatchStats()
    start = stats.clock(model.device)
    feats, errors = image_features(model, [_usable(model, r.visual) for r in requests])
    stats.prefill_seconds += stats.clock(model.device) - start
    ok = [i for i, e in enumerate(errors) if e is None]
    seqs = [model.embed(model.prompt(requests[i].context, num_images(feats[i])), feats[i]) for i in ok]
    results = [Generation("", 0, [], e) for e in errors]
    if ok:
        conversation = _answer(model, requests, ok, seqs, None, keep_state, results, stats)
    else:  # every image failed: nothing ran, nothing to continue
        conversation = Conversation(model.new_state(0), [-1] * len(requests))
    return results, conversation


@torch.inference_mode()
def continue_batch(
    model: VisualRWKV, conversation: Conversation, requests: list[GenerationRequest], stats: BatchStats | None = None
) -> tuple[list[Generation], Conversation]:
    """A further user turn (request.context) for each conversation, prefilled on top of its state.

    The previous answer turn is closed with "\\n\\n" as in the reference's training format; images of later
    turns are not supported (the reference takes one image per conversation).
    """
    tok = model.tokenizer
    ok = conversation.ongoing
    seqs = []
    for i in ok:
        pending = conversation.pending[conversation.rows[i]]
        closing = pending if pending == [STOP_TOKEN] else [*pending, STOP_TOKEN]
        ids = closing + tok.encode(user_turn(requests[i].context, False)) + tok.encode("Assistant:")
        seqs.append((model.embed_tokens(ids), None))
    results = [Generation("", 0, [], "no earlier turn to continue") for _ in requests]
    if not ok:
        return results, conversation
    state = conversation.state.select([conversation.rows[i] for i in ok])
    return results, _answer(model, requests, ok, seqs, state, True, results, stats or BatchStats())


@torch.inference_mode()
def loglikelihood_batch(
    model: VisualRWKV, requests: list[tuple[str, str, Image.Image | torch.Tensor | None]]
) -> list[tuple[float, bool]]:
    """(sum of log-probs of `continuation` after the prompt of `context`, whether greedy decoding would
    produce it) for each (context, continuation, image)."""
    feats, errors = image_features(model, [_usable(model, im) for _, _, im in requests])
    for e in errors:
        if e:
            raise ValueError(f"image could not be processed: {e}")
    seqs, rows, conts = [], [], []
    for (context, continuation, _), img in zip(requests, feats):
        prompt_rows, first_patch = model.embed(model.prompt(context, num_images(img)), img)
        cont = model.tokenizer.encode(continuation)
        cont_rows = model.embed_tokens(cont)
        seqs.append((torch.cat([prompt_rows, cont_rows]), first_patch))
        n = prompt_rows.shape[0]
        rows.append(list(range(n - 1, n - 1 + len(cont))))
        conts.append(cont)
    logits, _ = model.prefill(seqs, logit_rows=rows)
    results = []
    for (context, _, _), lg, cont in zip(requests, logits, conts):
        if not cont:
            results.append((0.0, True))
            continue
        target = torch.tensor(cont, device=lg.device)
        logp = torch.log_softmax(lg.float(), -1).gather(1, target[:, None]).sum().item()
        if not math.isfinite(logp):  # a NaN score would be compared and scored like any other
            raise NonFiniteLogitsError([f"context {context[:60]!r}"], "when scoring a continuation", model.dtype)
        results.append((logp, bool((lg.argmax(-1) == target).all())))
    return results
