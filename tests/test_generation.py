"""Stateful generation (prefill + recurrent decode) gives the reference protocol's greedy tokens."""

import pytest
import torch
from naive_reference import generate as naive_generate
from PIL import Image

from visualrwkv_eval.model import GenerationRequest, generate_batch, loglikelihood_batch

QUESTION = "What colour is the square?\nAnswer the question using a single word or phrase."
SHORT = "What colour is the square?"


def image():
    im = Image.new("RGB", (90, 70), (20, 120, 200))
    im.paste((240, 200, 10), (10, 10, 50, 50))
    return im


def templates(position):
    """The prompt chunks written out by hand from the reference's template (VisualRWKV-v6/v6.0/src/dataset.py), not
    with the model's template code."""
    return {
        "middle": (f"User: {SHORT}\n", f"\n{QUESTION}\n\n"),
        "first": ("User: ", f"\n{QUESTION}\n\n"),
        "last": (f"User: {QUESTION}\n", "\n\n"),
    }[position]


@pytest.fixture(scope="module")
def reference_weights(tiny_model):
    sd = {k: v.double() for k, v in tiny_model.rwkv.state_dict().items()}
    pixels = tiny_model.vision.preprocess([image()])
    with torch.no_grad():
        hidden = tiny_model.vision.clip(pixel_values=pixels).last_hidden_state[0]
        feats = torch.cat([hidden[1:], hidden[:1]]).double() @ tiny_model.proj.weight.double().T
    return sd, feats


RELEASE = ("bidirectional", "middle")  # the released checkpoints' scan and prompt: in the quick loop
SCANS_AND_POSITIONS = [
    pytest.param(scan, position, marks=() if (scan, position) == RELEASE else pytest.mark.slow)
    for scan in ("bidirectional", "unidirectional", "multidirectional")
    for position in ("middle", "first", "last")
]


@pytest.mark.parametrize(("scan", "position"), SCANS_AND_POSITIONS)
def test_stateful_decode_equals_full_recompute(tiny_variant, reference_weights, position, scan):
    model = tiny_variant(scan, position)
    sd, feats = reference_weights
    tok = model.tokenizer
    before, after = templates(position)
    expected = naive_generate(sd, tok.encode(before), feats, tok.encode(after) + tok.encode("Assistant:"),
                              model.vision.num_patches, scan, max_new_tokens=12)  # fmt: skip
    got = generate_batch(model, [GenerationRequest(QUESTION, image(), max_new_tokens=12)])[0]
    assert got.new_tokens == expected
    assert len(expected) >= 6  # the comparison covers several decode steps


def test_request_without_image_gets_zero_image_rows_first(tiny_model, reference_weights):
    sd, feats = reference_weights
    tok = tiny_model.tokenizer
    ids = tok.encode(f"User: {SHORT}\n\n") + tok.encode("Assistant:")
    expected = naive_generate(sd, [], torch.zeros_like(feats), ids, tiny_model.vision.num_patches,
                              "bidirectional", max_new_tokens=8)  # fmt: skip
    assert generate_batch(tiny_model, [GenerationRequest(SHORT, None, max_new_tokens=8)])[0].new_tokens == expected


def test_generate_api_returns_the_cut_answer(tiny_model):
    gen = generate_batch(tiny_model, [GenerationRequest(QUESTION, image(), max_new_tokens=16)])[0]
    text = tiny_model.tokenizer.decode(gen.new_tokens).split("\n\n")[0].strip()
    assert tiny_model.generate(QUESTION, [image()], max_new_tokens=16) == text
    assert (
        gen.prompt_tokens
        == len(tiny_model.tokenizer.encode(f"User: {SHORT}\n"))
        + 17
        + len(tiny_model.tokenizer.encode(f"\n{QUESTION}\n\n"))
        + 3
    )


def test_until_and_max_new_tokens(tiny_model):
    tok = tiny_model.tokenizer
    full = generate_batch(tiny_model, [GenerationRequest(QUESTION, image(), max_new_tokens=20)])[0]
    assert len(full.new_tokens) == 20  # the random model does not stop by itself on this prompt
    three = generate_batch(tiny_model, [GenerationRequest(QUESTION, image(), max_new_tokens=3)])[0]
    assert three.new_tokens == full.new_tokens[:3]
    # an until string taken from the middle of the output ends generation right after it appears
    j = next(j for j in range(4, 20) if tok.decode([full.new_tokens[j]]).strip() not in ("", "\ufffd"))
    stop = tok.decode([full.new_tokens[j]]).strip()
    raw = tok.decode_bytes(full.new_tokens)
    end = next(n for n in range(1, 21) if stop.encode() in tok.decode_bytes(full.new_tokens[:n]))
    cut = generate_batch(tiny_model, [GenerationRequest(QUESTION, image(), 20, until=(stop,))])[0]
    assert cut.new_tokens == full.new_tokens[:end]
    expected = raw[: raw.find(stop.encode())].split(b"\n\n")[0]
    try:
        expected = expected.decode().strip()
    except UnicodeDecodeError:
        expected = "\ufffd"
    assert cut.text == expected


def test_sampling_is_seeded(tiny_model):
    def sample(seed):
        req = GenerationRequest(QUESTION, image(), max_new_tokens=10, temperature=1.0, top_p=0.9, seed=seed)
        return generate_batch(tiny_model, [req])[0].new_tokens

    assert sample(1) == sample(1)
    assert sample(1) != sample(2) or sample(1) != sample(3)


def test_loglikelihood_matches_the_greedy_continuation(tiny_model):
    gen = generate_batch(tiny_model, [GenerationRequest(QUESTION, image(), max_new_tokens=4)])[0]
    continuation = tiny_model.tokenizer.decode(gen.new_tokens)
    (logp, greedy), (logp_other, greedy_other) = loglikelihood_batch(
        tiny_model, [(QUESTION, continuation, image()), (QUESTION, " zebra", image())]
    )
    assert greedy and not greedy_other
    assert logp < 0 and logp > logp_other
