"""VisualRWKV-7 end to end on a tiny random checkpoint (model/tiny7.py + the tiny image side of
model/vision7_weights.py), against tests/naive_visualrwkv7.py, a float64 re-implementation that re-runs the whole
left-padded sequence for every token as the reference does (github.com/howard-hou/VisualRWKV,
VisualRWKV-v7/v7.00/src/model.py, generate)."""

from __future__ import annotations

import naive_visualrwkv7 as naive
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from visualrwkv_eval.model import (
    GenerationRequest,
    continue_batch,
    generate_batch,
    load_model,
    loglikelihood_batch,
    start_conversation,
)
from visualrwkv_eval.model.left_pad import LeftPad
from visualrwkv_eval.model.prompt import ImageSlot, prompt_ids7, user_turn
from visualrwkv_eval.model.tiny7 import random_rwkv7_state_dict, size_config7
from visualrwkv_eval.model.tokenizer import STOP_TOKEN, world_tokenizer
from visualrwkv_eval.model.vision7_weights import tiny_image_weights

GQA = "Is the sky dark?\nAnswer the question using a single word or phrase."
MAX_NEW = 10


def tiny7_state_dict(seed: int = 0, stop_logit: float = 10.0) -> dict[str, torch.Tensor]:
    cfg = size_config7("tiny")
    sd = {f"rwkv.{k}": v for k, v in random_rwkv7_state_dict(cfg, seed=seed, stop_logit=stop_logit).items()}
    return sd | tiny_image_weights(cfg.n_embd, seed=seed + 1)


@pytest.fixture(scope="module")
def v7(tmp_path_factory):
    """(state dict, .pth path, fp32 model)."""
    sd = tiny7_state_dict()
    path = tmp_path_factory.mktemp("v7") / "model.pth"
    torch.save(sd, path)
    return sd, path, load_model(str(path), dtype="float32", device="cpu")


def images(n: int) -> list[Image.Image]:
    made = [Image.new("RGB", (60, 40), (200, 30, 90)), Image.radial_gradient("L").convert("RGB").resize((50, 70))]
    made.append(Image.linear_gradient("L").convert("RGB"))
    return made[:n]


def flat_ids(prompt, tokens_per_image: int) -> list[int]:
    """A Prompt's ids with each image slot as the reference's run of 65535 placeholders."""
    out: list[int] = []
    for s in prompt.segments:
        out += [naive.IMAGE_ID] * tokens_per_image if isinstance(s, ImageSlot) else s
    return out


def naive_answer(sd, model, question: str, ims: list[Image.Image], max_new: int = MAX_NEW) -> list[int]:
    ids = flat_ids(prompt_ids7(model.tokenizer, question, len(ims)), model.vision.num_tokens)
    feats = [model.vision(model.preprocess([im]).float())[0] for im in ims]  # the tower itself is tested elsewhere
    return naive.greedy(sd, ids, feats, max_new)


CASES = [("one image", "What is in the picture?", 1), ("two images", GQA, 2), ("text only", "Say something.", 0)]


@pytest.fixture(scope="module")
def expected(v7):
    sd, _, model = v7
    return {name: naive_answer(sd, model, q, images(n)) for name, q, n in CASES}


def request(question: str, n: int, max_new: int = MAX_NEW) -> GenerationRequest:
    ims = images(n)
    return GenerationRequest(question, (ims if n > 1 else ims[0]) if n else None, max_new)


def test_prompt_ids_of_the_gqa_example():
    """The verified tokenisation of the reference's prompt (image first, chunks tokenised on their own)."""
    tok = world_tokenizer()
    q = [11, 1140, 22590, 22485, 30575, 64, 11, 40301, 22590, 57009, 40085, 332, 47289, 32497, 4715, 46808, 47]
    want = [24281, 59, 33] + [65535] * 1024 + q + [261, 5585, 41693, 59]
    one = prompt_ids7(tok, GQA, 1)
    assert one.segments[1] == ImageSlot(0) and flat_ids(one, 1024) == want and len(want) == 1048
    two = flat_ids(prompt_ids7(tok, GQA, 2), 1024)
    assert two == [24281, 59, 33] + [65535] * 1024 + [11] + [65535] * 1024 + want[1027:]
    text = prompt_ids7(tok, "  a\n\n\n b <image> ", 0)  # blank lines collapsed, <image> removed, stripped
    assert text.segments == (tok.encode("User: a\n b\n\n") + tok.encode("Assistant:"),)
    with pytest.raises(ValueError, match="image_position='middle'"):
        prompt_ids7(tok, GQA, 1, "middle")


@pytest.mark.parametrize(("name", "question", "n"), CASES, ids=[c[0] for c in CASES])
def test_greedy_tokens_equal_the_naive_reference(v7, expected, name, question, n):
    _, _, model = v7
    got = generate_batch(model, [request(question, n)])[0]
    assert got.error is None and got.new_tokens == expected[name]
    assert 1 <= len(expected[name]) < MAX_NEW  # answers end by the stop token (3, 3 and 9 tokens here)


def test_batched_greedy_tokens_equal_the_naive_reference(v7, expected):
    _, _, model = v7
    reqs = [request(q, n) for _, q, n in CASES] + [request(CASES[0][1], 1)]
    got = generate_batch(model, reqs)
    assert [g.new_tokens for g in got] == [expected[name] for name, _, _ in CASES] + [expected[CASES[0][0]]]


def test_generate_api_uses_every_image(v7, expected):
    _, _, model = v7
    text = model.generate(GQA, images(2), max_new_tokens=MAX_NEW)
    assert text == model.tokenizer.decode(expected["two images"]).split("\n\n")[0].strip()


def sequences(model, count: int) -> list[torch.Tensor]:
    """Prompt rows of `count` sequences of different lengths (so their pad counts differ), with images."""
    out = []
    for i in range(count):
        ims = images(1 + i % 2)
        feats = model.encode_images(ims)
        prompt = prompt_ids7(model.tokenizer, "Why? " * (i + 1), len(ims))
        out.append(model.embed(prompt, feats)[0])
    return out


def teacher_forced(model, rows: list[torch.Tensor], tokens: list[list[int]]) -> list[list[torch.Tensor]]:
    """Logits [vocab] of every step of every sequence, fed the given tokens (all sequences the same count)."""
    logits, state = model.prefill([(r, None) for r in rows])
    steps = [[lg[-1]] for lg in logits]
    for t in range(len(tokens[0])):
        out = model.decode(torch.tensor([tk[t] for tk in tokens]), state)
        for s, row in zip(steps, out):
            s.append(row)
    return steps


@pytest.mark.slow
def test_every_step_equals_a_full_padded_rerun(v7):
    """The chains give, at every length T, the logits of the whole sequence after q(T) pads run from zero."""
    _, _, model = v7
    pad = LeftPad()
    rows = sequences(model, 2)
    tokens = [[100 + t for t in range(18)], [300 + 7 * t for t in range(18)]]  # past 16 steps: chains reused
    steps = teacher_forced(model, rows, tokens)
    pad_row = model.embed_tokens([STOP_TOKEN])
    for r, tk, got in zip(rows, tokens, steps):
        seq = torch.cat([r, model.embed_tokens(tk)])
        for t, lg in enumerate(got):
            prefix = seq[: r.shape[0] + t]
            full = torch.cat([pad_row.expand(pad.pads(prefix.shape[0]), -1), prefix])
            (want,), _ = model.raw_prefill([(full, None)])
            torch.testing.assert_close(lg, want[-1], rtol=1e-5, atol=1e-5)


def test_padding_matches_naive_logits(v7):
    """One step checked against the float64 reference itself (the pads go through ln0 and every layer)."""
    sd, _, model = v7
    rows = sequences(model, 1)[0]
    (lg,), _ = model.prefill([(rows, None)])
    lm = {k[5:]: v for k, v in naive.f64(sd).items() if k.startswith("rwkv.")}
    torch.testing.assert_close(lg[-1].double(), naive.padded_logits(lm, rows.double()), rtol=1e-4, atol=1e-4)
    unpadded = naive.lm_logits(lm, rows.double())
    assert (lg[-1].double() - unpadded).abs().max() > 1e-3  # the pads matter (not 0 here: 3 + 16 + ~10 rows)


@pytest.mark.slow
def test_batch_sizes_1_3_8_are_bitwise_equal(v7):
    """Each sequence's logits at every step, alone and packed with others (pads, chains and lengths differ
    between them): the same bits (CPU; model/rowwise.py)."""
    _, _, model = v7
    rows = sequences(model, 8)
    tokens = [[50 + 13 * i + t for t in range(5)] for i in range(8)]
    alone = [teacher_forced(model, [r], [tk])[0] for r, tk in zip(rows, tokens)]
    for size in (3, 8):
        got = []
        for s in range(0, 8, size):
            got += teacher_forced(model, rows[s : s + size], tokens[s : s + size])
        for a, b in zip(alone, got):
            assert all(torch.equal(x, y) for x, y in zip(a, b)), f"batch {size} changed a logit bit"


def test_padding_once_pads_the_prompt_only(v7):
    _, path, exact = v7
    once = load_model(str(path), dtype="float32", device="cpu", padding="once")
    rows = sequences(exact, 1)[0]
    tokens = [[100 + t for t in range(6)]]
    got_once = teacher_forced(once, [rows], tokens)[0]
    got_exact = teacher_forced(exact, [rows], tokens)[0]
    torch.testing.assert_close(got_once[0], got_exact[0], rtol=1e-5, atol=1e-5)  # the first token: the same pads
    p = LeftPad().pads(rows.shape[0])
    seq = torch.cat([exact.embed_tokens([STOP_TOKEN]).expand(p, -1), rows, exact.embed_tokens(tokens[0])])
    (full,), _ = exact.raw_prefill([(seq, None)], logit_rows=[list(range(p + rows.shape[0] - 1, seq.shape[0]))])
    torch.testing.assert_close(torch.stack(got_once), full, rtol=1e-5, atol=1e-5)


def test_loglikelihood_with_padding_once_uses_the_pads_of_the_context(v7):
    _, path, exact = v7
    once = load_model(str(path), dtype="float32", device="cpu", padding="once")
    req = [(GQA, " No", images(1)[0])]
    assert len(exact.tokenizer.encode(" No")) == 1  # one scored token: both modes use the context's pads
    assert loglikelihood_batch(once, req)[0][0] == pytest.approx(loglikelihood_batch(exact, req)[0][0], abs=1e-5)


def test_loglikelihood_uses_the_pads_of_each_length(v7):
    sd, _, model = v7
    ims = images(1)
    ((score, _),) = loglikelihood_batch(model, [(GQA, " No way", ims[0])])
    cont = model.tokenizer.encode(" No way")
    ids = flat_ids(prompt_ids7(model.tokenizer, GQA, 1), model.vision.num_tokens)
    lm = {k[5:]: v for k, v in naive.f64(sd).items() if k.startswith("rwkv.")}
    proj = {k[5:]: v for k, v in naive.f64(sd).items() if k.startswith("proj.")}
    rows = naive.prompt_rows(lm, proj, ids + cont, [model.vision(model.preprocess(ims).float())[0]])
    want = 0.0
    for j, tok in enumerate(cont):
        want += float(torch.log_softmax(naive.padded_logits(lm, rows[: len(ids) + j]), -1)[tok])
    assert score == pytest.approx(want, rel=1e-5, abs=1e-4)


def test_a_second_turn_equals_the_naive_reference(v7, expected):
    sd, _, model = v7
    first, conv = start_conversation(model, [request(*CASES[0][1:])])
    assert first[0].new_tokens == expected["one image"]
    (second,), _ = continue_batch(model, conv, [GenerationRequest("And then?", None, MAX_NEW)])
    tok = model.tokenizer
    ids = flat_ids(prompt_ids7(tok, CASES[0][1], 1), model.vision.num_tokens) + first[0].new_tokens + [STOP_TOKEN]
    ids += tok.encode(user_turn("And then?", False)) + tok.encode("Assistant:")
    feats = [model.vision(model.preprocess(images(1)).float())[0]]
    assert second.new_tokens == naive.greedy(sd, ids, feats, MAX_NEW)


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
def test_load_model_reads_pth_and_safetensors_alike(v7, tmp_path, stored):
    sd, _, _ = v7
    sd = {k: v.to(stored).contiguous() for k, v in sd.items()}
    torch.save(sd, tmp_path / "m.pth")
    save_file(sd, tmp_path / "m.safetensors")
    a = load_model(str(tmp_path / "m.pth"), dtype="float32", device="cpu")
    b = load_model(str(tmp_path / "m.safetensors"), dtype="float32", device="cpu")
    assert type(a.rwkv).__name__ == "RWKV7" and a.config.d_gate == 32 and a.max_images is None
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    req = [request(GQA, 2, 4)]
    assert generate_batch(a, req)[0].new_tokens == generate_batch(b, req)[0].new_tokens


def test_plain_x070_file_is_a_text_only_model(v7, tmp_path):
    sd, _, _ = v7
    torch.save({k[5:]: v for k, v in sd.items() if k.startswith("rwkv.")}, tmp_path / "lm.pth")
    lm = load_model(str(tmp_path / "lm.pth"), dtype="float32", device="cpu")
    assert lm.vision is None and lm.pad == LeftPad()
    got = generate_batch(lm, [GenerationRequest("Say something.", None, MAX_NEW)])[0].new_tokens
    assert got == naive.greedy(sd, flat_ids(prompt_ids7(lm.tokenizer, "Say something.", 0), 0), [], MAX_NEW)


def test_the_adapter_passes_every_image(v7, expected):
    """lmms-eval requests with one, two and no images answer as the naive reference (journal off, batch 3)."""
    from lmms_eval.api.instance import Instance

    from visualrwkv_eval.lmms_model import VisualRWKVLmms

    _, path, _ = v7
    lmms = VisualRWKVLmms(pretrained=str(path), dtype="float32", device="cpu", batch_size=3, journal="off")
    docs = [{"q": q, "images": images(n)} for _, q, n in CASES]
    lmms.task_dict = {"t": {"test": docs}}

    def instance(i: int) -> Instance:
        args = (docs[i]["q"], {"max_new_tokens": MAX_NEW}, lambda doc: doc["images"], i, "t", "test")
        return Instance("generate_until", args, i, {"task": "t", "doc_id": i, "repeats": 1})

    out = lmms.generate_until([instance(i) for i in range(len(docs))])
    texts = [lmms.model.tokenizer.decode(expected[name]).split("\n\n")[0].strip() for name, _, _ in CASES]
    assert [getattr(o, "text", o) for o in out] == texts
