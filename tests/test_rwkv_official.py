"""Text-only logits equal the official `rwkv` package's (strategy 'cpu fp32') on random x060 checkpoints."""

import os

import pytest
import torch
from helpers import VOCAB_SIZE

from visualrwkv_eval.model import RWKV6Config, load_model
from visualrwkv_eval.model.tiny import random_rwkv_weights

SHAPES = {
    "1b6-style": RWKV6Config(n_layer=3, n_embd=128, n_head=2, head_size=64, dim_ffn=448, d_mix=32, d_decay=64),
    "7b-style doubled LoRA": RWKV6Config(
        n_layer=2, n_embd=192, n_head=3, head_size=64, dim_ffn=672, d_mix=64, d_decay=128
    ),
}
TEXT = "User: What is the capital of France?\n\nAssistant: Paris is the capital.\n\n中文 and emoji 🙂"


@pytest.mark.parametrize("name", list(SHAPES))
def test_text_logits_match_official_rwkv(name, tmp_path):
    os.environ["RWKV_JIT_ON"] = "0"
    os.environ.pop("RWKV_V7_ON", None)
    from rwkv.model import RWKV

    cfg = SHAPES[name]
    path = tmp_path / "rwkv-x060.pth"
    torch.save(random_rwkv_weights(cfg, seed=7), path)
    ours = load_model(str(path), dtype="float32", device="cpu")
    assert ours.config == cfg and ours.vision is None

    official = RWKV(model=str(path)[: -len(".pth")], strategy="cpu fp32", verbose=False)
    ids = ours.tokenizer.encode(TEXT)
    expected, _ = official.forward(ids, None, full_output=True)
    got = ours.text_logits(ids)
    assert got.shape == expected.shape == (len(ids), VOCAB_SIZE)
    assert (got - expected).abs().max().item() <= 1e-4
