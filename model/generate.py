"""Batched generation and log-likelihood on VisualRWKV: one packed prefill, then recurrent decode of all
unfinished sequences together (O(1) work per new token), the reference's stop rule and answer cut."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from .tokenizer import STOP_TOKEN
from .visualrwkv import VisualRWKV


@dataclass
class GenerationRequest:
    context: str  # the question as lmms-eval builds it; the template is applied here
    image: Image.Image | None = None
    max_new_tokens: int = 128
    until: tuple[str, ...] = ()
    temperature: float = 0.0  # 0: greedy (the reference)
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Generation:
    text: str
    prompt_tokens: int  # rows prefilled, image rows included
    new_tokens: list[int]


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


def _next_tokens(logits: torch.Tensor, requests: list[GenerationRequest], generators) -> list[int]:
    greedy = logits.argmax(-1).tolist()  # on the model-dtype logits, as the reference does
    out = []
    for i, req in enumerate(requests):
        if req.temperature <= 0:
            out.append(greedy[i])
            continue
        probs = torch.softmax(logits[i].float().cpu() / req.temperature, -1)
        if req.top_p < 1.0:
            sorted_p, idx = probs.sort(descending=True)
            drop = sorted_p.cumsum(0) - sorted_p >= req.top_p  # keep the smallest head reaching top_p
            probs[idx[drop]] = 0.0
        out.append(int(torch.multinomial(probs, 1, generator=generators[i])))
    return out


def prefill_prompts(model: VisualRWKV, contexts: list[str], images: list[torch.Tensor | None], **kw):
    """Prefill one prompt per context (image features or None); returns (logits, state, prompt lengths)."""
    seqs = [model.embed(model.prompt(c, img is not None), img) for c, img in zip(contexts, images)]
    logits, state = model.prefill(seqs, **kw)
    return logits, state, [rows.shape[0] for rows, _ in seqs]


def _image_features(model: VisualRWKV, images: list[Image.Image | None]) -> list[torch.Tensor | None]:
    present = [i for i, im in enumerate(images) if im is not None]
    feats: list[torch.Tensor | None] = [None] * len(images)
    if present:
        encoded = model.encode_images([images[i] for i in present])
        for j, i in enumerate(present):
            feats[i] = encoded[j]
    return feats


@torch.inference_mode()
def generate_batch(model: VisualRWKV, requests: list[GenerationRequest]) -> list[Generation]:
    """Answer every request; the batch never changes any answer (each sequence keeps its own state)."""
    if not requests:
        return []
    feats = _image_features(model, [r.image for r in requests])
    logits, state, prompt_lengths = prefill_prompts(model, [r.context for r in requests], feats)
    logits = torch.cat(logits)
    generators = [torch.Generator().manual_seed(r.seed) for r in requests]
    outputs: list[list[int]] = [[] for _ in requests]
    active = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]
    if len(active) < len(requests):
        logits, state = logits[active], state.select(active)
    while active:
        tokens = _next_tokens(logits, [requests[i] for i in active], [generators[i] for i in active])
        keep = []
        for slot, (i, tok) in enumerate(zip(active, tokens)):
            req = requests[i]
            if tok == STOP_TOKEN:
                continue
            outputs[i].append(tok)
            if len(outputs[i]) >= req.max_new_tokens or _hit_until(model, outputs[i], req.until):
                continue
            keep.append(slot)
        if not keep:
            break
        if len(keep) < len(active):
            state = state.select(keep)
        active = [active[s] for s in keep]
        logits = model.decode(torch.tensor([tokens[s] for s in keep]), state)
    return [
        Generation(answer_text(model, out, r.until), n, out) for r, out, n in zip(requests, outputs, prompt_lengths)
    ]


def _hit_until(model: VisualRWKV, ids: list[int], until: tuple[str, ...]) -> bool:
    if not until:
        return False
    tail = model.tokenizer.decode_bytes(ids[-64:])  # an until string is far shorter than 64 tokens
    return any(s and s.encode("utf-8") in tail for s in until)


@torch.inference_mode()
def loglikelihood_batch(
    model: VisualRWKV, requests: list[tuple[str, str, Image.Image | None]]
) -> list[tuple[float, bool]]:
    """(sum of log-probs of `continuation` after the prompt of `context`, whether greedy decoding would
    produce it) for each (context, continuation, image)."""
    feats = _image_features(model, [im for _, _, im in requests])
    seqs, rows = [], []
    for (context, continuation, _), img in zip(requests, feats):
        prompt_rows, first_patch = model.embed(model.prompt(context, img is not None), img)
        cont = model.tokenizer.encode(continuation)
        cont_rows = model.rwkv.emb(torch.tensor(cont, dtype=torch.long, device=model.device))
        seqs.append((torch.cat([prompt_rows, cont_rows]), first_patch, cont))
        n = prompt_rows.shape[0]
        rows.append(list(range(n - 1, n - 1 + len(cont))))
    logits, _ = model.prefill([(r, p) for r, p, _ in seqs], logit_rows=rows)
    results = []
    for lg, (_, _, cont) in zip(logits, seqs):
        if not cont:
            results.append((0.0, True))
            continue
        target = torch.tensor(cont, device=lg.device)
        logp = torch.log_softmax(lg.float(), -1).gather(1, target[:, None]).sum().item()
        results.append((logp, bool((lg.argmax(-1) == target).all())))
    return results
