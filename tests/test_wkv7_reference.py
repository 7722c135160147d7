"""The PyTorch WKV7 reference: chunked prefill == a float64 token-by-token recurrence written here, decode, state
carry, packing, argument checks and the registry."""

import pytest
import torch

import visualrwkv_eval.kernels as kernels
from visualrwkv_eval.kernels.wkv7 import wkv7_decode_torch, wkv7_prefill_torch


def naive_wkv7(r, w, k, v, a, b, S):
    """One token at a time in float64: S = S diag(exp(-exp(w))) + (S a) b^T + v k^T, y = S r (after the update);
    S [H, N value, N key]."""
    r, w, k, v, a, b, S = (t.double() for t in (r, w, k, v, a, b, S.clone()))
    ys = []
    for t in range(r.shape[0]):
        sa = torch.einsum("hij,hj->hi", S, a[t])
        S = S * torch.exp(-torch.exp(w[t])).unsqueeze(-2) + sa.unsqueeze(-1) * b[t].unsqueeze(-2)
        S = S + v[t].unsqueeze(-1) * k[t].unsqueeze(-2)
        ys.append(torch.einsum("hij,hj->hi", S, r[t]))
    return torch.stack(ys) if ys else r.new_zeros(0, *r.shape[1:]), S


def inputs(T, H=2, N=64, B=1, seed=0, decay="realistic", dtype=torch.float32):
    """r, w, k, v, a, b [T, H, N] as RWKV-7 makes them, and an initial state [B, H, N, N]: w in
    (-inf, -0.5) (decays in (0.545, 1)), a = -kappa and b = kappa * a with kappa unit-norm per head, a in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(T, H, N, generator=g) for _ in range(3))
    if decay == "realistic":
        w = -torch.nn.functional.softplus(-2 * torch.randn(T, H, N, generator=g)) - 0.5
    else:  # "extreme": decays within 1e-9 of 1 and ~1e-24 of 0, mixed over time (beyond what RWKV-7 makes)
        w = torch.where(torch.rand(T, H, N, generator=g) < 0.5, -20.0, 4.0) + torch.randn(T, H, N, generator=g)
    kappa = torch.nn.functional.normalize(torch.randn(T, H, N, generator=g), dim=-1)
    a = torch.rand(T, H, N, generator=g)
    S = 0.5 * torch.randn(B, H, N, N, generator=g)
    return [t.to(dtype) for t in (r, w, k, v, -kappa, kappa * a)] + [S]


def rel_err(x, y):
    return ((x.double() - y.double()).abs().max() / y.double().abs().max()).item()


@pytest.mark.parametrize("T", [1, 7, 31, 32, 33, 64, 100])
@pytest.mark.parametrize("chunk", [16, 32, 64])
def test_chunked_prefill_equals_recurrence(T, chunk):
    *x, S = inputs(T, seed=T)
    y_ref, S_ref = naive_wkv7(*x, S[0])
    state = S.clone()
    y = wkv7_prefill_torch(*x, state, chunk=chunk)
    assert y.dtype == torch.float32 and y.shape == (T, 2, 64)
    assert rel_err(y, y_ref) < 2e-6
    assert rel_err(state[0], S_ref) < 2e-6


@pytest.mark.parametrize("decay", ["realistic", "extreme", "fastest"])
def test_long_sequence_stays_exact(decay):
    """500 tokens: errors do not grow with length; decays near 0 (nothing is divided by a cumulative decay) and
    the fastest decay RWKV-7 makes (0.545 at every step) included."""
    *x, S = inputs(500, H=1, seed=3, decay="extreme" if decay == "extreme" else "realistic")
    if decay == "fastest":
        x[1] = torch.full_like(x[1], -0.5)
    y_ref, S_ref = naive_wkv7(*x, S[0])
    state = S.clone()
    y = wkv7_prefill_torch(*x, state)
    assert torch.isfinite(y).all()
    assert rel_err(y, y_ref) < 2e-6 and rel_err(state[0], S_ref) < 2e-6


def test_pure_delta_rule():
    """a = -kappa, b = kappa (the delta rule, I - kappa kappa^T projections) and no decay at all."""
    *x, S = inputs(80, seed=4)
    x[1] = torch.full_like(x[1], -30.0)
    x[5] = -x[4]
    y_ref, S_ref = naive_wkv7(*x, S[0])
    state = S.clone()
    y = wkv7_prefill_torch(*x, state)
    assert rel_err(y, y_ref) < 2e-6 and rel_err(state[0], S_ref) < 2e-6


def test_packed_sequences_each_with_its_state():
    lengths = [5, 0, 1, 70, 33, 32]
    *x, S = inputs(sum(lengths), B=len(lengths), seed=7)
    cu = torch.tensor([0, *lengths]).cumsum(0)
    state = S.clone()
    y = wkv7_prefill_torch(*x, state, cu)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if s == e:
            assert torch.equal(state[i], S[i])  # an empty sequence leaves its state alone
            continue
        y_ref, S_ref = naive_wkv7(*(t[s:e] for t in x), S[i])
        assert rel_err(y[s:e], y_ref) < 2e-6 and rel_err(state[i], S_ref) < 2e-6


def test_bounded_groups_of_chunks(monkeypatch):
    """Long inputs are computed a few chunk positions at a time (bounded memory): the same results, the state
    carried from group to group. Here every group holds at most 3 chunks of 2 heads."""
    import visualrwkv_eval.kernels.wkv7.reference as reference

    monkeypatch.setattr(reference, "GROUP_CHUNK_HEADS", 6)
    lengths = [100, 0, 40, 1]
    *x, S = inputs(sum(lengths), B=len(lengths), seed=9)
    cu = torch.tensor([0, *lengths]).cumsum(0)
    state = S.clone()
    y = wkv7_prefill_torch(*x, state, cu, chunk=16)
    assert reference._groups([4, 3, 1, 1, 1], 3) == [[4], [3], [1, 1, 1]]
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        y_ref, S_ref = naive_wkv7(*(t[s:e] for t in x), S[i])
        assert rel_err(state[i], S_ref) < 2e-6
        if e > s:
            assert rel_err(y[s:e], y_ref) < 2e-6


def test_offsets_as_int32_and_all_empty():
    *x, S = inputs(0, B=2)
    state = S.clone()
    y = wkv7_prefill_torch(*x, state, torch.tensor([0, 0, 0], dtype=torch.int32))
    assert y.shape == (0, 2, 64) and torch.equal(state, S)


@pytest.mark.parametrize("cut", [1, 16, 31, 32, 45])
def test_split_prefill_equals_whole(cut):
    *x, S = inputs(77, seed=cut)
    whole, parts = S.clone(), S.clone()
    y = wkv7_prefill_torch(*x, whole)
    y1 = wkv7_prefill_torch(*(t[:cut] for t in x), parts)
    y2 = wkv7_prefill_torch(*(t[cut:] for t in x), parts)
    assert rel_err(torch.cat([y1, y2]), y) < 2e-6 and rel_err(parts, whole) < 2e-6


def test_decode_steps_equal_prefill():
    """B = 3 sequences, 12 decode steps each == one packed prefill of the same tokens."""
    B, steps = 3, 12
    *x, S = inputs(B * steps, B=B, seed=5)
    per_step = [t.view(steps, B, *t.shape[1:]) for t in x]  # token t of sequence b at row t * B + b
    state = S.clone()
    ys = torch.stack([wkv7_decode_torch(*(t[i] for t in per_step), state) for i in range(steps)], 1)  # [B, steps]
    packed = [t.transpose(0, 1).reshape(B * steps, *t.shape[2:]) for t in per_step]
    prefilled = S.clone()
    y = wkv7_prefill_torch(*packed, prefilled, torch.arange(B + 1) * steps)
    assert rel_err(ys.reshape(B * steps, 2, 64), y) < 2e-6 and rel_err(state, prefilled) < 2e-6
    y_ref, S_ref = naive_wkv7(*(t[:steps] for t in packed), S[0])
    assert rel_err(ys[0], y_ref) < 2e-6 and rel_err(state[0], S_ref) < 2e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_inputs_compute_in_fp32(dtype):
    *x, S = inputs(40, seed=6, dtype=dtype)
    y_ref, S_ref = naive_wkv7(*x, S[0])  # the same rounded inputs, in float64
    state = S.clone()
    y = wkv7_prefill_torch(*x, state)
    assert y.dtype == dtype and state.dtype == torch.float32
    assert rel_err(state[0], S_ref) < 2e-6
    assert rel_err(y, y_ref) < 1e-2  # one rounding to the 16-bit output
    state = S.clone()
    assert wkv7_decode_torch(*(t[:1] for t in x), state).dtype == dtype


def test_strided_inputs_and_state():
    *x, S = inputs(20, seed=8)
    state_t = S.transpose(-1, -2).contiguous().transpose(-1, -2)
    r_s = torch.cat([x[0], x[0]], -1)[..., :64]
    assert not (state_t.is_contiguous() or r_s.is_contiguous())
    expected = S.clone()
    y_ref = wkv7_prefill_torch(*x, expected)
    y = wkv7_prefill_torch(r_s, *x[1:], state_t)
    assert torch.equal(y, y_ref) and torch.equal(state_t, expected)
    step_t, step = state_t.clone(), state_t.contiguous()
    assert torch.equal(wkv7_decode_torch(*(t[:1] for t in x), step_t), wkv7_decode_torch(*(t[:1] for t in x), step))
    assert torch.equal(step_t, step)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x: [x[0][:, :1], *x[1:]], "w has shape"),
        (lambda x: [*x[:4], x[4].half(), *x[5:]], "share one dtype"),
        (lambda x: [*x[:6], x[6].double()], "state must be float32"),
        (lambda x: [*x[:6], x[6][:, :1]], "state must be"),
        (lambda x: [x[0].long(), *x[1:]], "r has dtype"),
    ],
    ids=["shape", "dtype", "state-dtype", "state-shape", "int"],
)
def test_bad_arguments_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        wkv7_prefill_torch(*change(inputs(5)))


def test_bad_offsets_are_refused():
    *x, S = inputs(5, B=2)
    with pytest.raises(ValueError, match="rise from 0 to T = 5"):
        wkv7_prefill_torch(*x, S, torch.tensor([0, 3, 4]))
    with pytest.raises(ValueError, match="power of two"):
        wkv7_prefill_torch(*x, S, torch.tensor([0, 3, 5]), chunk=24)


def test_registered_in_the_kernel_registry():
    prefill, decode = kernels.get("wkv7", "torch")
    assert prefill is wkv7_prefill_torch and decode is wkv7_decode_torch
    assert kernels.resolve_backend("auto", "cpu", torch.float32, op="wkv7") == "torch"


def test_ut_inverse_of_the_worst_case_stays_exact():
    """(I - A)^-1 by blocks, for A = -1 everywhere below the diagonal (every kappa equal, a = 1: the powers of A
    grow like binomial coefficients, so a power series would lose everything; the inverse itself is small)."""
    from visualrwkv_eval.kernels.wkv7.reference import _ut_inverse

    A = -torch.ones(64, 64).tril(-1)
    expected = torch.linalg.inv(torch.eye(64, dtype=torch.float64) - A.double())
    assert (_ut_inverse(A).double() - expected).abs().max() < 1e-6
    A = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)).tril(-1) / 4
    expected = torch.linalg.inv(torch.eye(32, dtype=torch.float64) - A.double())
    assert rel_err(_ut_inverse(A), expected) < 1e-5
