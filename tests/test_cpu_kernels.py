"""The C kernels for CPU (kernels/wkv6/wkv6_cpu.c, kernels/rowmm/rowmm.c) against their PyTorch references, and the
properties the model relies on: a sequence's (or a row's) bits never depend on the batch."""

from __future__ import annotations

import pytest
import torch
from helpers import cu_seqlens, naive_wkv6, rel_err, wkv6_inputs

from visualrwkv_eval import kernels
from visualrwkv_eval.kernels.rowmm import cpu as rowmm_cpu
from visualrwkv_eval.kernels.rowmm import rowmm_torch
from visualrwkv_eval.kernels.wkv6 import cpu as wkv6_cpu
from visualrwkv_eval.kernels.wkv6.reference import wkv6_decode_torch, wkv6_prefill_torch

if (why := wkv6_cpu.probe(torch.float32) or rowmm_cpu.build_error()) is not None:
    pytest.skip(f"the C kernels do not build here: {why}", allow_module_level=True)


@pytest.mark.parametrize("decay", ["realistic", "extreme"])
def test_wkv6_c_prefill_equals_the_reference_with_carried_state(decay):
    lengths = [37, 1, 0, 130]
    r, k, v, w, u, state = wkv6_inputs(sum(lengths), H=3, B=len(lengths), decay=decay, seed=1)
    s_ref, s_c = state.clone(), state.clone()
    cu = cu_seqlens(lengths)
    y_ref = wkv6_prefill_torch(r, k, v, w, u, s_ref, cu)
    y_c = wkv6_prefill_c_via_registry(r, k, v, w, u, s_c, cu)
    assert rel_err(y_c, y_ref) < 1e-5 and rel_err(s_c, s_ref) < 1e-5


def wkv6_prefill_c_via_registry(*args):
    return kernels.get("wkv6", "c")[0](*args)


def test_wkv6_c_is_the_recurrence_step_by_step():
    """Against the float64 loop of the tests (not the reference): the same recurrence, token by token."""
    r, k, v, w, u, state = wkv6_inputs(50, H=2, seed=2)
    want_y, want_s = naive_wkv6(r, k, v, w, u, state[0])
    s = state.clone()
    y = wkv6_cpu.wkv6_prefill_c(r, k, v, w, u, s)
    assert rel_err(y, want_y) < 1e-5 and rel_err(s[0], want_s) < 1e-5


def test_wkv6_c_decode_equals_the_reference():
    r, k, v, w, u, state = wkv6_inputs(5, H=4, B=5, seed=3)
    s_ref, s_c = state.clone(), state.clone()
    y_ref, y_c = wkv6_decode_torch(r, k, v, w, u, s_ref), wkv6_cpu.wkv6_decode_c(r, k, v, w, u, s_c)
    assert rel_err(y_c, y_ref) < 1e-5 and rel_err(s_c, s_ref) < 1e-5


def test_wkv6_c_sequence_bits_do_not_depend_on_the_batch():
    lengths = [20, 3, 64]
    r, k, v, w, u, state = wkv6_inputs(sum(lengths), H=2, B=3, seed=4)
    s_all = state.clone()
    y_all = wkv6_cpu.wkv6_prefill_c(r, k, v, w, u, s_all, cu_seqlens(lengths)).split(lengths)
    for b, (start, n) in enumerate(zip([0, 20, 23], lengths)):
        s = state[b : b + 1].clone()
        rows = slice(start, start + n)
        assert torch.equal(wkv6_cpu.wkv6_prefill_c(r[rows], k[rows], v[rows], w[rows], u, s), y_all[b])
        assert torch.equal(s[0], s_all[b])


def test_wkv6_c_takes_strided_inputs_and_state():
    """Any strides, as the contract says: a transposed-storage r and state give the reference's results, and the
    strided state is updated in place."""
    r, k, v, w, u, state = wkv6_inputs(9, H=2, B=1, seed=5)
    s_ref, s_strided = state.clone(), state.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not s_strided.is_contiguous()
    y_ref = wkv6_prefill_torch(r, k, v, w, u, s_ref)
    y = wkv6_cpu.wkv6_prefill_c(r.transpose(0, 1).contiguous().transpose(0, 1), k, v, w, u, s_strided)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(s_strided, s_ref) < 1e-5


def test_wkv6_c_refuses_what_it_does_not_take():
    r, k, v, w, u, state = wkv6_inputs(4, H=1, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"wkv6 \(c\): needs float32"):
        wkv6_cpu.wkv6_prefill_c(r, k, v, w, u, state)
    assert "float32 only" in wkv6_cpu.probe(torch.bfloat16)
    r, k, v, w, u, state = wkv6_inputs(4, H=1)
    with pytest.raises(ValueError, match="wkv6"):  # the shared contract: a wrong state shape is named
        wkv6_cpu.wkv6_prefill_c(r, k, v, w, u, state[:, :, :3])


@pytest.mark.parametrize("m,k,n", [(1, 768, 768), (3, 67, 45), (8, 2688, 768), (33, 128, 448), (5, 9, 2050)])
def test_rowmm_c_equals_the_reference(m, k, n):
    g = torch.Generator().manual_seed(m * k)
    x, w = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    want = x.double() @ w.double()
    scale = want.abs().max().item()
    assert (rowmm_cpu.rowmm_c(x, w).double() - want).abs().max().item() < 1e-5 * scale
    assert (rowmm_torch(x, w).double() - want).abs().max().item() < 1e-5 * scale


@pytest.mark.parametrize("k,n", [(768, 2688), (2688, 768), (2048, 160), (32, 768), (100, 33)])
def test_rowmm_c_row_bits_never_depend_on_the_other_rows(k, n):
    """Every row count 1..40, every position, one and two threads, strided rows: the bits of a row alone."""
    g = torch.Generator().manual_seed(k + n)
    x, w = torch.randn(40, k, generator=g), torch.randn(k, n, generator=g)
    alone = torch.cat([rowmm_cpu.rowmm_c(x[i : i + 1], w) for i in range(40)])
    threads = torch.get_num_threads()
    try:
        for t in {1, 2, threads}:
            torch.set_num_threads(t)
            for m in (2, 3, 8, 17, 32, 40):
                for off in {0, 40 - m}:
                    assert torch.equal(rowmm_cpu.rowmm_c(x[off : off + m], w), alone[off : off + m]), (t, m, off)
    finally:
        torch.set_num_threads(threads)
    wide = torch.zeros(40, k + 7)
    wide[:, 3 : 3 + k] = x
    out = torch.zeros(40, n + 5)
    rowmm_cpu.rowmm_c(wide[:, 3 : 3 + k], w, out=out[:, :n])
    assert torch.equal(out[:, :n], alone)


def test_rowmm_c_refuses_what_it_does_not_take():
    with pytest.raises(ValueError, match=r"expected x \[M, K\] and w \[K, N\] \(or .*\), got \(2, 3\) and \(4, 5\)"):
        rowmm_cpu.rowmm_c(torch.randn(2, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"is torch\.float64 but w is torch\.float32"):
        rowmm_cpu.rowmm_c(torch.randn(2, 3, dtype=torch.float64), torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"rowmm \(c\): needs fp32"):
        rowmm_cpu.rowmm_c(torch.randn(2, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64))


def test_a_missing_compiler_falls_back_to_the_references(monkeypatch, tmp_path):
    """No C compiler: the build fails with a reason, and the model's choices fall back with it (not an error)."""
    from visualrwkv_eval.kernels import cpu_common

    monkeypatch.setenv("VISUALRWKV_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_common, "compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C compiler"):
        cpu_common.build(wkv6_cpu.SOURCE)
    assert "no C compiler" in cpu_common.error_of(lambda: cpu_common.build(rowmm_cpu.SOURCE))


def test_rowmm_c_batched_products_equal_each_product_alone():
    """G products in one call ([G, M, K] @ [G, K, N], the ddlerp's five LoRA outputs) give each product's bits."""
    g = torch.Generator().manual_seed(7)
    x, w = torch.randn(7, 5, 32, generator=g).transpose(0, 1), torch.randn(5, 32, 768, generator=g)
    together = rowmm_cpu.rowmm_c(x, w)
    for i in range(5):
        assert torch.equal(together[i], rowmm_cpu.rowmm_c(x[i], w[i]))
        assert torch.equal(together[i, 3:4], rowmm_cpu.rowmm_c(x[i, 3:4], w[i]))
    assert rel_err(rowmm_torch(x, w), torch.bmm(x.double(), w.double())) < 1e-6
    assert rel_err(together, torch.bmm(x.double(), w.double())) < 1e-6


def test_the_row_kernel_choice(monkeypatch):
    """VISUALRWKV_ROWMM: auto takes the C kernel where it builds, torch the reference; c demands the C kernel and
    says why it cannot have it; anything else is refused by name."""
    from visualrwkv_eval.kernels import rowmm

    def choose(value: str):
        monkeypatch.setenv("VISUALRWKV_ROWMM", value)
        rowmm.row_kernel.cache_clear()
        return rowmm.row_kernel()

    try:
        assert choose("auto") is rowmm_cpu.rowmm_c
        assert choose("torch") is rowmm_torch
        with pytest.raises(ValueError, match="VISUALRWKV_ROWMM='fast': expected one of auto, c, torch"):
            choose("fast")
        monkeypatch.setattr(rowmm_cpu, "build_error", lambda: "no C compiler (set $CC or install gcc)")
        with pytest.raises(RuntimeError, match=r"VISUALRWKV_ROWMM=c: .*no C compiler"):
            choose("c")
        with pytest.warns(RuntimeWarning, match="no C compiler"):
            assert choose("auto") is rowmm_torch
    finally:
        monkeypatch.delenv("VISUALRWKV_ROWMM")
        rowmm.row_kernel.cache_clear()


def _rwkv6(cfg, seed: int):
    from visualrwkv_eval.model.rwkv6 import RWKV6
    from visualrwkv_eval.model.tiny import random_rwkv_weights

    lm = RWKV6(cfg)
    lm.load_state_dict(random_rwkv_weights(cfg, seed))
    lm.cpu_layout_()
    return lm.eval()


def _decode_layers(lm, backend: str, x: torch.Tensor, state):
    from visualrwkv_eval.model.packing import Packing

    lm.use_backend(backend)
    for layer in range(len(lm.blocks)):
        x, _ = lm.block(layer, x, state, Packing.for_decode())
    return x


@pytest.mark.parametrize("shape", ["1b6-like", "7b-like ranks"])
def test_block6_c_decode_equals_the_pytorch_path(shape):
    """The C block (kernels/block6) against the PyTorch TimeMix / ChannelMix path on the same rows and state: the
    outputs and every state tensor, over 3 layers and 4 sequences."""
    from visualrwkv_eval.model.config import RWKV6Config

    if shape == "1b6-like":
        cfg = RWKV6Config.for_size(3, 256, vocab_size=300)
    else:  # the 7B's doubled LoRA ranks at a small width
        cfg = RWKV6Config(3, 256, 4, 64, 896, d_mix=64, d_decay=128, vocab_size=300)
    lm = _rwkv6(cfg, seed=3)
    with torch.inference_mode():
        state = lm.new_state(4)
        for t in (state.att_shift, state.wkv, state.ffn_shift):
            t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(t.dim())))
        x = lm.embed_tokens(torch.tensor([5, 17, 200, 9]))
        s_c, s_t = state.select(range(4)), state.select(range(4))
        assert lm._fused_block(0) is not None  # the C path is taken
        y_c, y_t = _decode_layers(lm, "c", x, s_c), _decode_layers(lm, "torch", x, s_t)
    assert rel_err(y_c, y_t) < 1e-5
    for name in ("att_shift", "wkv", "ffn_shift"):
        assert rel_err(getattr(s_c, name), getattr(s_t, name)) < 1e-5, name


def test_block6_c_decode_row_bits_do_not_depend_on_the_batch():
    from visualrwkv_eval.model.config import RWKV6Config

    lm = _rwkv6(RWKV6Config.for_size(2, 128, vocab_size=300), seed=4)
    tokens = torch.tensor([3, 99, 250, 7, 41])
    with torch.inference_mode():
        state = lm.new_state(5)
        _decode_layers(lm, "c", lm.embed_tokens(tokens), state)  # a non-zero state to start from
        together_state = state.select(range(5))
        together = _decode_layers(lm, "c", lm.embed_tokens(tokens), together_state)
        for i in range(5):
            alone_state = state.select([i])
            alone = _decode_layers(lm, "c", lm.embed_tokens(tokens[i : i + 1]), alone_state)
            assert torch.equal(alone[0], together[i])
            assert torch.equal(alone_state.wkv[:, 0], together_state.wkv[:, i])


def test_block6_c_decode_follows_a_reload_of_the_weights():
    """The C block looks its parameters up once; a load_state_dict(assign=True), which replaces them, is seen."""
    from visualrwkv_eval.model.config import RWKV6Config
    from visualrwkv_eval.model.tiny import random_rwkv_weights

    cfg = RWKV6Config.for_size(2, 128, vocab_size=300)
    lm = _rwkv6(cfg, seed=5)
    tokens = torch.tensor([3, 99])
    with torch.inference_mode():
        _decode_layers(lm, "c", lm.embed_tokens(tokens), lm.new_state(2))
        lm.load_state_dict(random_rwkv_weights(cfg, 6), assign=True)
        lm.cpu_layout_()
        y_c = _decode_layers(lm, "c", lm.embed_tokens(tokens), lm.new_state(2))
        y_t = _decode_layers(lm, "torch", lm.embed_tokens(tokens), lm.new_state(2))
    assert rel_err(y_c, y_t) < 1e-5
