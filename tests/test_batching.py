"""Batch size and packing never change a result: prefill, decode and generation are bitwise batch-invariant
on CPU (fp32), each sequence with its own recurrent state."""

import pytest
import torch
from helpers import NEWLINE
from PIL import Image

from visualrwkv_eval.kernels.rowmm import cpu as rowmm_cpu
from visualrwkv_eval.kernels.rowmm import row_kernel, rowmm_torch
from visualrwkv_eval.model import GenerationRequest, generate_batch, rowwise
from visualrwkv_eval.model.packing import Packing
from visualrwkv_eval.model.tokenizer import STOP_TOKEN

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


@pytest.mark.slow
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
    tokens = torch.tensor([NEWLINE, STOP_TOKEN, 5585, 33, 42])
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


@pytest.mark.slow
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


# The products behind the invariance (model/rowwise.py): every row against the same row alone.
TINY_SHAPES = [(128, 128), (128, 448), (448, 128), (128, 160), (32, 128), (128, 64), (64, 128)]  # (K, N)
REAL_SHAPES = [(768, 768), (768, 2688), (2688, 768), (2048, 2048), (2048, 7168), (7168, 2048)]


@pytest.mark.parametrize("k,n", TINY_SHAPES)
def test_every_row_count_gives_a_row_the_same_bits(k, n):
    assert rowwise.invariance_check(k, n) == []


@pytest.mark.slow
@pytest.mark.parametrize("k,n", REAL_SHAPES)
def test_every_row_count_gives_a_row_the_same_bits_at_real_shapes(k, n):
    assert rowwise.invariance_check(k, n) == []


def test_row_counts_of_the_blas_calls():
    """Rows that may share calls go in calls of 2..TILE rows (a lone row padded to 2: the 1-row GEMV kernel gives
    other bits); over packed sequences, one longer than TILE is a call of its own and runs of shorter ones share
    tiles; rows of different sequences (decode) go through the row kernel, not torch.mm."""
    calls = []
    w = torch.randn(64, 96)
    real_mm = torch.mm
    try:
        torch.mm = lambda a, b, **kw: calls.append(a.shape[0]) or real_mm(a, b, **kw)
        for rows in (1, 3, 8, 32, 129):
            rowwise.matmul(torch.randn(rows, 64), w)
        assert calls == [2, 3, 8, 32, 65, 64]
        calls.clear()
        lengths = [3, 200, 1, 2, 129, 60, 70]
        rowwise.matmul(torch.randn(sum(lengths), 64), w, Packing.from_lengths(lengths, torch.device("cpu")))
        assert calls == [3, 200, 3, 129, 65, 65]
        calls.clear()
        rowwise.matmul(torch.randn(3, 64), w, Packing.for_decode())
        assert calls == ([1, 1, 1] if row_kernel() is rowmm_torch else [])
    finally:
        torch.mm = real_mm


@pytest.mark.parametrize("kernel", ["c", "torch"])
def test_decode_rows_alone_equal_the_batch_1_step(kernel, monkeypatch):
    if kernel == "c" and rowmm_cpu.build_error() is not None:
        pytest.skip(f"the C row kernel is unusable here: {rowmm_cpu.build_error()}")
    monkeypatch.setattr(rowwise, "row_kernel", lambda: rowmm_cpu.rowmm_c if kernel == "c" else rowmm_torch)
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(33, 128, generator=g), torch.randn(128, 448, generator=g)
    alone = torch.cat([rowwise.matmul(x[i : i + 1], w, rows=True) for i in range(33)])
    for rows in (2, 3, 8, 32, 33):
        assert torch.equal(rowwise.matmul(x[:rows], w, rows=True), alone[:rows])
        assert torch.equal(rowwise.matmul(x[:rows], w, Packing.for_decode()), alone[:rows])
    m, other = torch.randn(5, 9, 32, generator=g), torch.randn(5, 32, 128, generator=g)
    single = torch.cat([rowwise.bmm(m[:, i : i + 1], other, rows=True) for i in range(9)], dim=1)
    assert torch.equal(rowwise.bmm(m, other, rows=True), single)


def _sequence_alone_and_packed(k: int, n: int, lengths: list[int], seed: int = 3) -> list[int]:
    """Indices of the sequences whose rows differ between a prefill of all of them packed and of each alone."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) / k**0.5).t().contiguous()
    x = torch.randn(sum(lengths), k, generator=g)
    cpu = torch.device("cpu")
    packed = rowwise.matmul(x, w, Packing.from_lengths(lengths, cpu)).split(lengths)
    alone = [rowwise.matmul(part, w, Packing.from_lengths([len(part)], cpu)) for part in x.split(lengths)]
    return [i for i, (a, b) in enumerate(zip(packed, alone)) if not torch.equal(a, b)]


def test_a_sequence_gets_the_same_bits_packed_with_others_or_alone():
    """A long sequence is a call of its own wherever it lies among the packed rows (any alignment), short ones
    share tiles: packing never changes a row."""
    assert _sequence_alone_and_packed(128, 448, [5, 300, 1, 131, 7, 640, 2, 1, 128, 129]) == []


@pytest.mark.slow
@pytest.mark.parametrize("k,n", REAL_SHAPES)
def test_a_sequence_gets_the_same_bits_packed_with_others_or_alone_at_real_shapes(k, n):
    assert _sequence_alone_and_packed(k, n, [3, 640, 1, 577, 45, 129, 2]) == []


def test_batched_bmm_rows_match_single_rows():
    g = torch.Generator().manual_seed(1)
    x, other = torch.randn(5, 40, 32, generator=g), torch.randn(5, 32, 128, generator=g)
    alone = torch.cat([rowwise.bmm(x[:, i : i + 1], other) for i in range(40)], dim=1)
    for rows in (2, 3, 17, 40):
        assert torch.equal(rowwise.bmm(x[:, :rows], other), alone[:, :rows])


def test_model_weights_take_the_fast_layout_on_cpu(tiny_model):
    tiny_model.text_logits([1, 2, 3])
    linears = [m for m in tiny_model.rwkv.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(rowwise._row_major(m.weight.t()) for m in linears)


@pytest.mark.slow
def test_decode_at_batch_1_3_8_32(tiny_model):
    ids = [tiny_model.tokenizer.encode(f"Question {i}: what is {i} + {2 * i}?") for i in range(32)]
    seqs = [(tiny_model.rwkv.emb(torch.tensor(t)), None) for t in ids]
    logits, state = tiny_model.prefill(seqs)
    tokens = torch.stack([lg[-1] for lg in logits]).argmax(-1)
    steps = {}
    for size in (1, 3, 8, 32):
        got = []
        for start in range(0, 32, size):
            rows = list(range(start, min(start + size, 32)))
            part = state.select(rows)
            out = [tiny_model.decode(tokens[rows], part) for _ in range(3)]
            got.append(torch.stack(out, 1))
        steps[size] = torch.cat(got)
    for size in (3, 8, 32):
        assert torch.equal(steps[size], steps[1])
