"""The PyTorch WKV6 reference: chunked prefill == the float64 step-by-step recurrence (tests/helpers.py), state
carry, packing."""

import pytest
import torch
from helpers import cu_seqlens, naive_wkv6, rel_err, wkv6_inputs

from visualrwkv_eval.kernels import wkv6_decode_torch, wkv6_prefill_torch


@pytest.mark.parametrize("T", [1, 7, 16, 33, 100])
@pytest.mark.parametrize("decay", ["realistic", "extreme"])
def test_chunked_prefill_equals_recurrence(T, decay):
    r, k, v, w, u, S = wkv6_inputs(T, decay=decay, seed=T)
    y_ref, S_ref = naive_wkv6(r, k, v, w, u, S[0])
    state = S.clone()
    y = wkv6_prefill_torch(r, k, v, w, u, state)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(state[0], S_ref) < 1e-5


def test_decode_step_equals_recurrence():
    r, k, v, w, u, S = wkv6_inputs(5)
    y_ref, S_ref = naive_wkv6(r, k, v, w, u, S[0])
    state = S.clone()
    ys = [wkv6_decode_torch(r[t : t + 1], k[t : t + 1], v[t : t + 1], w[t : t + 1], u, state) for t in range(5)]
    assert rel_err(torch.cat(ys), y_ref) < 1e-5
    assert rel_err(state[0], S_ref) < 1e-5


@pytest.mark.parametrize("split", [1, 16, 23])
def test_carried_state_equals_one_prefill(split):
    r, k, v, w, u, S = wkv6_inputs(50, seed=split)
    whole = S.clone()
    y = wkv6_prefill_torch(r, k, v, w, u, whole)
    parts = S.clone()
    y1 = wkv6_prefill_torch(r[:split], k[:split], v[:split], w[:split], u, parts)
    y2 = wkv6_prefill_torch(r[split:], k[split:], v[split:], w[split:], u, parts)
    torch.testing.assert_close(torch.cat([y1, y2]), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)


def test_packed_batch_equals_separate_runs():
    lengths = [5, 1, 40, 17]
    seqs = [wkv6_inputs(n, seed=i) for i, n in enumerate(lengths)]
    u = seqs[0][4]
    packed = [torch.cat([s[j] for s in seqs]) for j in range(4)]
    state = torch.cat([s[5] for s in seqs])
    cu = cu_seqlens(lengths)
    y = wkv6_prefill_torch(*packed, u, state, cu)
    for i, s in enumerate(seqs):
        alone = s[5].clone()
        y_i = wkv6_prefill_torch(*s[:4], u, alone)
        assert torch.equal(y[cu[i] : cu[i + 1]], y_i)
        assert torch.equal(state[i], alone[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_io_keeps_fp32_state(dtype):
    r, k, v, w, u, S = wkv6_inputs(20)
    y_ref, _ = naive_wkv6(*(t.to(dtype) for t in (r, k, v, w, u)), S[0])
    state = S.clone()
    y = wkv6_prefill_torch(*(t.to(dtype) for t in (r, k, v, w, u)), state)
    assert y.dtype == dtype and state.dtype == torch.float32
    assert (y.double() - y_ref).abs().mean() < 2e-2 * y_ref.abs().mean()


def test_bad_arguments_are_named():
    r, k, v, w, u, S = wkv6_inputs(4)
    with pytest.raises(ValueError, match="k has shape"):
        wkv6_prefill_torch(r, k[:3], v, w, u, S)
    with pytest.raises(ValueError, match="u must be"):
        wkv6_prefill_torch(r, k, v, w, u[:1], S)
    with pytest.raises(ValueError, match="state must be float32"):
        wkv6_prefill_torch(r, k, v, w, u, S.double())
    with pytest.raises(ValueError, match="state must be"):
        wkv6_prefill_torch(r, k, v, w, u, S, torch.tensor([0, 2, 4]))
    with pytest.raises(ValueError, match="cu_seqlens must rise"):
        wkv6_prefill_torch(r, k, v, w, u, torch.cat([S, S]), torch.tensor([0, 3, 2]))
    with pytest.raises(ValueError, match="dtype"):
        wkv6_decode_torch(r.int(), k, v, w, u, torch.cat([S] * 4))
