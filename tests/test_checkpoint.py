"""Checkpoint reading: formats, shape inference and a clear error for every bad input."""

import math
import pickle

import pytest
import torch
from helpers import HEAD_SIZE, VOCAB_SIZE
from safetensors.torch import save_file

from visualrwkv_eval.model import CheckpointError, RWKV6Config, load_checkpoint, load_model
from visualrwkv_eval.model.checkpoint import detect_rwkv_version, nonfinite_tensors
from visualrwkv_eval.model.tiny import SIZES, random_rwkv_weights

SMALL = RWKV6Config(n_layer=2, n_embd=128, n_head=2, head_size=64, dim_ffn=448, d_mix=32, d_decay=64)


def visual_state_dict(cfg=SMALL):
    sd = {f"rwkv.{k}": v for k, v in random_rwkv_weights(cfg).items()}
    sd["proj.weight"] = torch.randn(cfg.n_embd, 64)
    return sd


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("1b6", dict(n_layer=24, n_embd=2048, n_head=32, dim_ffn=7168, d_mix=32, d_decay=64)),
        ("3b", dict(n_layer=32, n_embd=2560, n_head=40, dim_ffn=8960, d_mix=32, d_decay=64)),
        ("7b", dict(n_layer=32, n_embd=4096, n_head=64, dim_ffn=14336, d_mix=64, d_decay=128)),
    ],
)
def test_dimensions_inferred_from_release_shapes(size, expected):
    shapes = RWKV6Config.for_size(*SIZES[size]).expected_shapes()
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    cfg = RWKV6Config.from_state_dict(sd)
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.head_size == HEAD_SIZE and cfg.vocab_size == VOCAB_SIZE


def test_visualrwkv_pth_and_safetensors_load_alike(tmp_path):
    sd = visual_state_dict()
    torch.save(sd, tmp_path / "m.pth")
    save_file(sd, tmp_path / "m.safetensors")
    a, b = load_checkpoint(tmp_path / "m.pth"), load_checkpoint(tmp_path / "m.safetensors")
    assert a.config == b.config == SMALL
    assert a.proj.shape == (128, 64) and not a.vit
    assert all(torch.equal(a.rwkv[k], b.rwkv[k]) for k in a.rwkv)


def test_wrapped_lightning_state_dict(tmp_path):
    torch.save({"state_dict": visual_state_dict()}, tmp_path / "m.pth")
    assert load_checkpoint(tmp_path / "m.pth").config == SMALL


def expect_error(tmp_path, obj, pattern, name="bad.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope\.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(str(tmp_path / "nope.pth"))


def test_truncated_and_corrupt_files(tmp_path):
    torch.save(visual_state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pth")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"junk\.pth.*truncated or corrupt"):
        load_checkpoint(tmp_path / "junk.pth")
    save_file(visual_state_dict(), tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.safetensors")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_never_unpickles_code(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"emb.weight": torch.zeros(1), "x": Payload()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="never unpickles code"):
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


def test_not_a_state_dict(tmp_path):
    expect_error(tmp_path, [torch.zeros(2)], "is not a state dict")
    expect_error(tmp_path, {"emb.weight": 3}, "non-tensor entries emb.weight")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = visual_state_dict()
    del sd["rwkv.blocks.1.att.gate.weight"], sd["rwkv.ln_out.bias"]
    expect_error(tmp_path, sd, r"missing keys: blocks\.1\.att\.gate\.weight, ln_out\.bias")
    sd = visual_state_dict()
    sd["rwkv.blocks.0.att.extra"] = torch.zeros(1)
    expect_error(tmp_path, sd, r"unexpected keys: blocks\.0\.att\.extra")
    sd = visual_state_dict()
    sd["lora.A"] = torch.zeros(1)
    expect_error(tmp_path, sd, r"unexpected keys outside rwkv\.\*.*lora\.A")
    sd = visual_state_dict()
    del sd["proj.weight"]
    expect_error(tmp_path, sd, "without proj.weight")


def test_shape_mismatch_is_named(tmp_path):
    sd = visual_state_dict()
    sd["rwkv.blocks.1.ffn.value.weight"] = torch.zeros(128, 100)
    expect_error(tmp_path, sd, r"shape mismatch.*blocks\.1\.ffn\.value\.weight \(128, 100\) != \(128, 448\)")
    sd = visual_state_dict()
    sd["proj.weight"] = torch.zeros(64, 64)
    expect_error(tmp_path, sd, r"proj\.weight has shape \(64, 64\)")


@pytest.mark.parametrize(
    ("keys", "version"),
    [
        (["blocks.0.att.time_first", "blocks.0.att.time_mix_k"], "x040"),
        (["blocks.0.att.time_faaaa", "blocks.0.att.time_mix_k", "blocks.0.att.ln_x.weight"], "x050"),
        (["blocks.0.att.time_faaaa", "blocks.0.att.time_mix_k", "blocks.0.att.gate.weight"], "x052"),
    ],
)
def test_other_rwkv_versions_are_named(tmp_path, keys, version):
    sd = {"emb.weight": torch.zeros(4, 4), **{k: torch.zeros(4) for k in keys}}
    assert detect_rwkv_version(sd) == version
    expect_error(tmp_path, sd, f"not an RWKV-6 \\(x060\\) or RWKV-7 \\(x070\\) checkpoint: detected RWKV {version}")
    expect_error(tmp_path, {f"rwkv.{k}": v for k, v in sd.items()} | {"proj.weight": torch.zeros(4, 4)},
                 f"detected RWKV {version}", "visual.pth")  # fmt: skip


def test_no_rwkv_blocks_at_all(tmp_path):
    expect_error(tmp_path, {"weight": torch.zeros(3)}, "no RWKV blocks found")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_the_finiteness_check_finds_any_bad_value(dtype, value):
    """The fused aminmax check, wherever the value sits, in contiguous and strided tensors; counts are exact."""
    for pos in (0, 517, 4095):
        t = torch.randn(64, 64).to(dtype)
        t.view(-1)[pos] = value
        kind = "1 NaN, 0 inf" if math.isnan(value) else "0 NaN, 1 inf"
        assert nonfinite_tensors({"w": t, "ok": torch.ones(3, dtype=dtype)}) == [f"w ({kind})"]
        assert nonfinite_tensors({"wt": t.t()}) == [f"wt ({kind})"]
        strided = t[:, 1::2] if pos % 2 else t[:, ::2]
        assert nonfinite_tensors({"s": strided}) == [f"s ({kind})"]
    assert nonfinite_tensors({"big": torch.full((3,), 6e4, dtype=dtype), "empty": torch.zeros(0, dtype=dtype)}) == []
