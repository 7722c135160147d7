"""The RWKV-7 (x070) language model against the official `rwkv` package and against itself.

- Text-only logits equal the `rwkv` package's RWKV_x070 (0.8.32, `RWKV_V7_ON=1`, strategy "cpu fp32") on random
  x070 checkpoints of the VisualRWKV-7 0B1 and 1B5 shapes, with the reference's left pads of token 261 fed to both.
- Decode steps continue a prefill exactly; packing and batch size never change a row's logits (bitwise, CPU).
"""

import gc
import importlib.util
import os

import pytest
import torch

from visualrwkv_eval import kernels
from visualrwkv_eval.model.config import RWKV7Config
from visualrwkv_eval.model.packing import Packing
from visualrwkv_eval.model.rwkv7 import RWKV7
from visualrwkv_eval.model.tiny7 import random_rwkv7_state_dict, size_config7
from visualrwkv_eval.model.tokenizer import world_tokenizer

PAD = 261  # "\n\n": VisualRWKV-7 left-pads every forward to a multiple of 16 with it
TEXT = "User: What is the capital of France?\nAnswer the question using a single word or phrase.\n\nAssistant:"


# ---- a plain WKV7 loop, written here independently of kernels/ ------------------------------------------------
def _step(S, r, w, k, v, a, b):
    """One token for one sequence: S [H, N(value), N(key)] fp32; r..b [H, N]."""
    r, w, k, v, a, b = (t.float() for t in (r, w, k, v, a, b))
    decay = torch.exp(-torch.exp(w))
    S = S * decay[:, None, :] + (S @ a[:, :, None]) * b[:, None, :] + v[:, :, None] * k[:, None, :]
    return S, (S @ r[:, :, None])[..., 0]


def loop_wkv7_prefill(r, w, k, v, a, b, state, cu_seqlens=None):
    cu = [0, r.shape[0]] if cu_seqlens is None else cu_seqlens.tolist()
    y = torch.empty(r.shape, dtype=torch.float32)
    for s in range(len(cu) - 1):
        S = state[s]
        for t in range(cu[s], cu[s + 1]):
            S, y[t] = _step(S, r[t], w[t], k[t], v[t], a[t], b[t])
        state[s] = S
    return y.to(r.dtype)


def loop_wkv7_decode(r, w, k, v, a, b, state):
    y = torch.empty(r.shape, dtype=torch.float32)
    for s in range(r.shape[0]):
        state[s], y[s] = _step(state[s], r[s], w[s], k[s], v[s], a[s], b[s])
    return y.to(r.dtype)


@pytest.fixture(scope="module", autouse=True)
def wkv7_until_kernels_land():
    """The model takes WKV7 from the kernels registry; until the registry has it, the loop above stands in."""
    with pytest.MonkeyPatch.context() as mp:
        if "wkv7" not in kernels.OPS:
            get, loop = kernels.get, (loop_wkv7_prefill, loop_wkv7_decode)
            mp.setattr(kernels, "get", lambda op, backend: loop if op == "wkv7" else get(op, backend))
        yield


# ---- the official package ----------------------------------------------------------------------------------------
def official_x070(path_without_ext: str):
    """RWKV_x070 from the `rwkv` package, loaded as a module of its own: the package picks its model family at
    import time from RWKV_V7_ON, and other tests import it for x060."""
    import rwkv

    old = os.environ.get("RWKV_V7_ON")
    os.environ["RWKV_V7_ON"] = "1"
    try:
        spec = importlib.util.spec_from_file_location(
            "rwkv_x070_oracle", os.path.join(os.path.dirname(rwkv.__file__), "model.py")
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if old is None:
            os.environ.pop("RWKV_V7_ON")
        else:
            os.environ["RWKV_V7_ON"] = old
    return module.RWKV_x070(path_without_ext, "cpu fp32")


def padded_prompt() -> list[int]:
    ids = world_tokenizer().encode(TEXT)
    pads = (16 - len(ids) % 16) % 16
    assert pads > 0, "the prompt should exercise the pads"
    return [PAD] * pads + ids


def ours_logits(model: RWKV7, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        rows = model.embed_tokens(torch.tensor(ids))
        hidden = model(rows, model.new_state(1), Packing.from_lengths([len(ids)], rows.device))
        return model.logits(hidden)


def compare_with_official(cfg: RWKV7Config, tmp_path, storage_dtype=torch.float32, extra=None) -> None:
    path = tmp_path / "rwkv-x070.pth"
    torch.save(random_rwkv7_state_dict(cfg, seed=3, dtype=storage_dtype) | (extra or {}), path)
    gc.collect()
    ids = padded_prompt()
    official = official_x070(str(path)[: -len(".pth")])
    expected, _ = official.forward(ids, None, full_output=True)
    del official
    gc.collect()
    weights = {k: v.float() for k, v in torch.load(path, mmap=True, weights_only=True).items()}
    model = RWKV7.from_weights(weights)
    del weights
    assert model.config == cfg
    got = ours_logits(model, ids)
    del model
    gc.collect()
    assert got.shape == expected.shape == (len(ids), cfg.vocab_size)
    assert expected.std().item() > 1.0  # logits of a realistic size, not a trivially small comparison
    err = (got - expected).abs().max().item()
    print(f"{cfg.n_layer} x {cfg.n_embd}: max abs logit difference {err:.3g} (logit std {expected.std():.3g})")
    assert err <= 1e-4, err


def test_tiny_logits_match_official(tmp_path):
    compare_with_official(size_config7("tiny"), tmp_path)


def test_unused_layer0_value_lora_is_ignored(tmp_path):
    # newer RWKV-LM files carry blocks.0.att.v0/v1/v2; both implementations ignore them
    cfg = size_config7("tiny")
    C, rank = cfg.n_embd, cfg.d_mv
    extra = {"blocks.0.att.v0": torch.ones(1, 1, C), "blocks.0.att.v1": torch.ones(C, rank)}
    compare_with_official(cfg, tmp_path, extra=extra | {"blocks.0.att.v2": torch.ones(rank, C)})


@pytest.mark.slow
def test_0b1_shape_logits_match_official(tmp_path):
    compare_with_official(size_config7("0b1"), tmp_path)


@pytest.mark.slow
def test_1b5_shape_logits_match_official(tmp_path):
    # stored in bf16 (half the file; exact values in fp32): both sides compute in fp32
    compare_with_official(size_config7("1b5"), tmp_path, storage_dtype=torch.bfloat16)


# ---- config and weights ------------------------------------------------------------------------------------------
def test_config_from_weights_reads_every_rank():
    cfg = RWKV7Config.for_size(3, 128, (32, 64, 96, 128))  # four different ranks: none can be read for another
    sd = random_rwkv7_state_dict(cfg, seed=0)
    assert "blocks.0.att.v1" not in sd and "blocks.1.att.v1" in sd
    assert RWKV7Config.from_weights(sd) == cfg
    assert RWKV7Config.from_weights({f"rwkv.{k}": v for k, v in sd.items()}) == cfg
    model = RWKV7.from_weights({f"rwkv.{k}": v for k, v in sd.items()} | {"proj.gate.weight": torch.zeros(1)})
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == cfg.expected_shapes()


def test_release_shapes_and_rank_rule():
    # the rule of the current reference code gives 0B1's and 1B5's ranks, but not the 0B4 file's gate rank
    assert RWKV7Config.for_size(12, 768) == size_config7("0b1")
    assert RWKV7Config.for_size(24, 2048) == size_config7("1b5")
    assert RWKV7Config.for_size(24, 1024).d_gate == 160 != size_config7("0b4").d_gate == 128


def test_random_decays_span_their_range():
    sd = random_rwkv7_state_dict(size_config7("tiny"), seed=0)
    z = sd["blocks.1.att.w0"].flatten()
    d = torch.exp(-torch.exp(-torch.nn.functional.softplus(-z) - 0.5))
    assert d.min() < 0.6 and d.max() > 0.99


# ---- self-consistency: decode, packing, batching --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny7():
    return RWKV7.from_weights(random_rwkv7_state_dict(size_config7("tiny"), seed=5))


def prefill(model, seqs, state=None):
    """Last-row logits [B, vocab] of packed sequences (lists of ids)."""
    with torch.inference_mode():
        state = model.new_state(len(seqs)) if state is None else state
        pack = Packing.from_lengths([len(s) for s in seqs], torch.device("cpu"))
        hidden = model(model.embed_tokens(torch.tensor([i for s in seqs for i in s])), state, pack)
        return model.logits(hidden[pack.lasts]), state


def decode(model, tokens, state):
    with torch.inference_mode():
        hidden = model(model.embed_tokens(torch.tensor(tokens)), state, Packing.for_decode())
        return model.logits(hidden)


def test_decode_steps_equal_prefill(tiny7):
    ids = padded_prompt()
    full = ours_logits(tiny7, ids)
    _, state = prefill(tiny7, [ids[:20]])
    for t in range(20, len(ids)):
        step = decode(tiny7, [ids[t]], state)
        assert (step[0] - full[t]).abs().max().item() <= 2e-5, t


def test_state_reports_its_size(tiny7):
    cfg = tiny7.config
    state = tiny7.new_state(3)
    assert state.bytes_per_sequence == cfg.n_layer * (2 * cfg.n_embd * 4 + cfg.n_head * cfg.head_size**2 * 4)
    assert state.select([2, 0]).batch_size == 2 and type(state.select([1])) is type(state)


PROMPTS = [list(range(1000 + 97 * i, 1000 + 97 * i + n)) for i, n in enumerate((5, 1, 17, 33, 2, 9, 16, 40))]


def test_packed_equals_separate(tiny7):
    packed, state = prefill(tiny7, PROMPTS)
    for i, p in enumerate(PROMPTS):
        alone, s = prefill(tiny7, [p])
        assert torch.equal(packed[i], alone[0]), i
        assert torch.equal(state.wkv[:, i], s.wkv[:, 0]) and torch.equal(state.att_shift[:, i], s.att_shift[:, 0])


def run_batches(model, batch: int) -> torch.Tensor:
    """PROMPTS in batches of `batch`: prefill, then 3 decode steps; logits [len(PROMPTS), 4, vocab]."""
    out = []
    for i in range(0, len(PROMPTS), batch):
        seqs = PROMPTS[i : i + batch]
        first, state = prefill(model, seqs)
        steps = [first] + [decode(model, [(7 * t + len(s)) % 65000 + 1 for s in seqs], state) for t in range(3)]
        out.append(torch.stack(steps, 1))
    return torch.cat(out)


@pytest.mark.parametrize("batch", [3, 8])
def test_batch_size_never_changes_a_row(tiny7, batch):
    assert torch.equal(run_batches(tiny7, batch), run_batches(tiny7, 1))
