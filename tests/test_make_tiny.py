"""`visualrwkv-eval make-tiny`: deterministic random models in the release key format."""

import subprocess
import sys

import pytest
import torch

from visualrwkv_eval.model import RWKV6Config, load_checkpoint
from visualrwkv_eval.model.tiny import random_rwkv_weights, size_config


@pytest.mark.slow  # two CLI processes
def test_cli_writes_release_format_deterministically(tmp_path):
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "visualrwkv_eval.cli", "make-tiny", str(tmp_path / name), "--seed", "3"],
                       check=True, capture_output=True)  # fmt: skip
    a = torch.load(tmp_path / "a" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    families = {k.split(".")[0] for k in a}
    assert families == {"rwkv", "proj", "vit"}
    assert any(k.startswith("vit.vision_model.encoder.layers.") for k in a)
    assert (tmp_path / "a" / "vision_tower" / "config.json").is_file()
    assert (tmp_path / "a" / "vision_tower" / "preprocessor_config.json").is_file()
    ckpt = load_checkpoint(tmp_path / "a" / "model.pth")
    assert ckpt.config == size_config("tiny")


def test_other_seed_other_weights():
    cfg = size_config("tiny")
    assert not torch.equal(random_rwkv_weights(cfg, 0)["emb.weight"], random_rwkv_weights(cfg, 1)["emb.weight"])


@pytest.mark.parametrize(("size", "n_layer", "n_embd", "d_mix"), [("1b6", 24, 2048, 32), ("7b", 32, 4096, 64)])
def test_real_sizes_have_release_shapes(size, n_layer, n_embd, d_mix):
    cfg = size_config(size)
    assert (cfg.n_layer, cfg.n_embd, cfg.d_mix) == (n_layer, n_embd, d_mix)
    assert cfg == RWKV6Config.for_size(n_layer, n_embd)
