"""Misuse of VisualRWKV-7 checkpoints and options never gives a silent bad run (the v7 rows of
tests/test_misuse.py): each malformed file or option is refused at load with a message naming the file, the
tensor or the argument, and what was expected."""

from __future__ import annotations

import math
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from visualrwkv_eval import lmms_model as adapter
from visualrwkv_eval.model import CheckpointError, VisionTowerError, load_checkpoint, load_model
from visualrwkv_eval.model.tiny7 import random_rwkv7_state_dict, size_config7
from visualrwkv_eval.model.vision7_weights import tiny_image_weights

C = 128  # the tiny model's n_embd


@pytest.fixture(scope="module")
def sd7() -> dict[str, torch.Tensor]:
    cfg = size_config7("tiny")
    sd = {f"rwkv.{k}": v for k, v in random_rwkv7_state_dict(cfg, seed=0).items()}
    return sd | tiny_image_weights(cfg.n_embd, seed=1)


def save(sd: dict, path, stored=torch.float32):
    sd = {k: v.to(stored) if v.is_floating_point() else v for k, v in sd.items()}
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    return path


def edit(**changes):
    """A change to a copy of the state dict: key=None drops it, key=tensor sets it (keys with / for dots)."""

    def change(sd):
        sd = dict(sd)
        for key, value in changes.items():
            key = key.replace("/", ".")
            if value is None:
                del sd[key]
            else:
                sd[key] = value
        return sd

    return change


def poison(key: str, value: float):
    def change(sd):
        sd = dict(sd)
        sd[key] = sd[key].clone()
        sd[key].view(-1)[3] = value
        return sd

    return change


def other_vocab(sd):
    sd = dict(sd)
    for key in ("rwkv.emb.weight", "rwkv.head.weight"):
        sd[key] = sd[key][:65000].clone()
    return sd


def narrow_projector(sd):
    sd = dict(sd)
    sd["proj.o_proj.weight"] = sd["proj.o_proj.weight"][:64].clone()
    sd["proj.ln_v.weight"], sd["proj.ln_v.bias"] = torch.ones(64), torch.zeros(64)
    return sd


BAD_FILES7 = [
    (edit(**{"rwkv/blocks/1/att/v1": None}), CheckpointError, r"missing keys: rwkv\.blocks\.1\.att\.v1"),
    (edit(**{"rwkv/blocks/0/att/r_k": None}), CheckpointError,
     r"missing key 'blocks\.0\.att\.r_k' needed to infer the RWKV-7 model shape"),
    (edit(**{"rwkv/blocks/0/att/gate/weight": torch.zeros(C, C)}), CheckpointError,
     r"unexpected keys: rwkv\.blocks\.0\.att\.gate\.weight"),  # an x060 key
    (edit(**{"rwkv/blocks/1/att/w1": torch.zeros(C, 48)}), CheckpointError,
     r"shape mismatch .*rwkv\.blocks\.1\.att\.w1 \(128, 48\) != \(128, 32\)"),
    (poison("rwkv.blocks.1.att.key.weight", math.nan), CheckpointError,
     r"non-finite weights .* rwkv\.blocks\.1\.att\.key\.weight \(1 NaN"),
    (poison("proj.gate.weight", math.inf), CheckpointError, r"non-finite weights .* proj\.gate\.weight \(0 NaN, 1 inf\)"),
    (poison("vit.sam_featurizer.blocks.0.mlp.lin1.weight", -math.inf), CheckpointError,
     r"vit\.sam_featurizer\.blocks\.0\.mlp\.lin1\.weight"),
    (other_vocab, CheckpointError, r"vocabulary of 65000 tokens; .*World tokenizer, which needs exactly 65536"),
    (edit(**{"rwkv/blocks/0/att/r_k": torch.zeros(2, 64, dtype=torch.long)}), CheckpointError,
     r"non-floating dtype: rwkv\.blocks\.0\.att\.r_k \(torch\.int64\)"),
    (narrow_projector, CheckpointError, r"the projector \(proj\.\*\) gives rows of width 64; .* n_embd is 128"),
    (edit(**{"proj/ln_v/bias": None}), CheckpointError, r"context-gated projector: expected proj\.\{gate\.weight"),
    (edit(**{"proj/gate/weight": torch.zeros(300, 300), "proj/o_proj/weight": torch.zeros(C, 300)}), CheckpointError,
     r"the projector takes 300 features but the vision tower .* gives 336"),
    (edit(**{"vit/dino_featurizer/blocks/0/ls1/gamma": None}), VisionTowerError,
     r"vision tower: 1 missing key\(s\): vit\.dino_featurizer\.blocks\.0\.ls1\.gamma"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "error", "pattern"), BAD_FILES7, ids=[p[:40] for _, _, p in BAD_FILES7])
@pytest.mark.parametrize(("suffix", "stored"), [(".pth", torch.float32), (".safetensors", torch.bfloat16)])
def test_malformed_v7_files_are_refused(sd7, tmp_path, change, error, pattern, suffix, stored):
    path = save(change(sd7), tmp_path / f"m{suffix}", stored)
    with pytest.raises(error, match=pattern) as err:
        load_model(str(path), dtype="float32", device="cpu")
    if error is CheckpointError:
        assert str(path) in str(err.value)


def test_ranks_come_from_the_shapes(sd7, tmp_path):
    """A file whose LoRA ranks differ from the rank rule (as VisualRWKV-v0700-0B4's gate rank 128) loads as is."""
    cfg = size_config7("tiny")
    wide = type(cfg)(**{**vars(cfg), "d_gate": 64, "d_decay": 96})
    sd = {f"rwkv.{k}": v for k, v in random_rwkv7_state_dict(wide, seed=2).items()}
    sd |= {k: v for k, v in sd7.items() if not k.startswith("rwkv.")}
    ckpt = load_checkpoint(save(sd, tmp_path / "m.pth"))
    assert (ckpt.config.d_gate, ckpt.config.d_decay, ckpt.config.d_aaa, ckpt.config.d_mv) == (64, 96, 32, 32)


def test_unused_layer0_value_lora_is_accepted(sd7, tmp_path):
    """Newer RWKV-LM x070 files carry blocks.0.att.v0/v1/v2, which nothing uses: such a file loads, same model."""
    lm = {k[5:]: v for k, v in sd7.items() if k.startswith("rwkv.")}
    extra = {"blocks.0.att.v0": torch.zeros(1, 1, C), "blocks.0.att.v1": torch.zeros(C, 32)}
    extra["blocks.0.att.v2"] = torch.zeros(32, C)
    a = load_model(str(save(lm, tmp_path / "a.pth")), device="cpu")
    b = load_model(str(save(lm | extra, tmp_path / "b.pth")), device="cpu")
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_truncated_v7_file(sd7, tmp_path):
    path = save(sd7, tmp_path / "m.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + r".*truncated or corrupt"):
        load_checkpoint(path)


def test_no_vision_weights_and_no_tower_source(sd7, tmp_path):
    path = save({k: v for k, v in sd7.items() if not k.startswith("vit.")}, tmp_path / "m.pth")
    with pytest.raises(VisionTowerError, match=r"holds no vision weights \(vit\.\*\) and vision_tower="):
        load_model(str(path), device="cpu")


OPTIONS7 = [
    (dict(image_position="middle"), r"image_position='middle': RWKV-7 \(x070\) checkpoints take first"),
    (dict(scan="bidirectional"), r"scan='bidirectional': RWKV-7 \(x070\) checkpoints take unidirectional"),
]


@pytest.mark.parametrize(("kwargs", "pattern"), OPTIONS7, ids=[str(k) for k, _ in OPTIONS7])
def test_options_v7_has_not(sd7, tmp_path, kwargs, pattern):
    path = save(sd7, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=pattern):
        load_model(str(path), device="cpu", **kwargs)


def test_padding_is_checked_before_loading_and_only_for_padded_families(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match=r"padding='fast': expected one of exact, once"):
        load_model(str(tmp_path / "absent.pth"), padding="fast")
    with pytest.raises(ValueError, match=r"padding='fast': expected one of exact, once"):
        adapter.VisualRWKVLmms(pretrained=str(tmp_path / "absent.pth"), padding="fast")
    with pytest.raises(ValueError, match=r"padding='once': RWKV-6 \(x060\) checkpoints have no left padding"):
        load_model(str(tiny_dir / "model.pth"), vision_tower=str(tiny_dir / "vision_tower"), padding="once")


def test_image_to_a_text_only_x070_model(sd7, tmp_path):
    path = save({k[5:]: v for k, v in sd7.items() if k.startswith("rwkv.")}, tmp_path / "lm.pth")
    lm = load_model(str(path), device="cpu")
    with pytest.raises(ValueError, match="text only"):
        lm.generate("What is it?", [Image.new("RGB", (8, 8))])
