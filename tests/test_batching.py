"""Batch size and packing never change a result: prefill, decode and generation are bitwise batch-invariant
on CPU (fp32), each sequence with its own recurrent state."""

import torch
from PIL import Image

from visualrwkv_eval.model import GenerationRequest, generate_batch

QUESTIONS = [
    "What color is the square?\nAnswer the question using a single word or phrase.",
    "Is there a circle in the image?",
    "How many shapes are there? Count them carefully, one by one, and answer with a number.",
    "Hi",
]


def requests(n: int, max_new_tokens: int = 12) -> list[GenerationRequest]:
    out = []
    for i in range(n):
        image = None if i % 4 == 3 else Image.new("RGB", (30 + 7 * i, 40), (40 * i % 255, 90, 200 - 9 * i))
        out.append(GenerationRequest(QUESTIONS[i % 4] + " " * (i // 4), image, max_new_tokens))
    return out


def embedded(model, reqs):
    feats = [None if r.image is None else model.encode_images([r.image])[0] for r in reqs]
    return [model.embed(model.prompt(r.context, f is not None), f) for r, f in zip(reqs, feats)]


def test_packed_prefill_is_bitwise_equal_to_separate_prefills(tiny_model):
    seqs = embedded(tiny_model, requests(7))
    packed, state = tiny_model.prefill(seqs)
    for i, seq in enumerate(seqs):
        (alone,), own = tiny_model.prefill([seq])
        assert torch.equal(packed[i], alone)
        for field in ("att_shift", "wkv", "ffn_shift"):
            assert torch.equal(getattr(state, field)[:, i], getattr(own, field)[:, 0])


def test_batched_decode_is_bitwise_equal_to_single_decode(tiny_model):
    seqs = embedded(tiny_model, requests(5))
    _, batch_state = tiny_model.prefill(seqs)
    singles = [tiny_model.prefill([s])[1] for s in seqs]
    tokens = torch.tensor([11, 261, 5585, 33, 42])
    for _ in range(4):
        batch_logits = tiny_model.decode(tokens, batch_state)
        for i, st in enumerate(singles):
            assert torch.equal(batch_logits[i], tiny_model.decode(tokens[i : i + 1], st)[0])
        tokens = batch_logits.argmax(-1)


def test_images_encode_alike_alone_and_together(tiny_model):
    images = [r.image for r in requests(6) if r.image is not None]
    together = tiny_model.encode_images(images)
    for i, im in enumerate(images):
        assert torch.equal(together[i], tiny_model.encode_images([im])[0])


def test_generation_does_not_depend_on_the_batch(tiny_model):
    reqs = requests(10, max_new_tokens=16)
    alone = [generate_batch(tiny_model, [r])[0].new_tokens for r in reqs]
    assert len({len(a) for a in alone}) > 1 or max(map(len, alone)) == 16
    for size in (3, 10):
        got = []
        for start in range(0, len(reqs), size):
            got += [g.new_tokens for g in generate_batch(tiny_model, reqs[start : start + size])]
        assert got == alone
    shuffled = [reqs[i] for i in (7, 2, 9, 0, 4, 1, 8, 3, 6, 5)]
    assert [g.new_tokens for g in generate_batch(tiny_model, shuffled)] == [
        alone[i] for i in (7, 2, 9, 0, 4, 1, 8, 3, 6, 5)
    ]
