"""A second model family plugs in through the families table alone (docs/architecture.md): a toy "VisualRWKV with
a 2-layer MLP projector on a 2-layer RWKV-6" is registered below in a few dozen lines, then loaded and run through
load_model and the unchanged lmms-eval adapter; its greedy tokens equal the naive float64 recompute of
tests/naive_reference.py on features projected by hand. Also: the kernels registry and the per-row carry that the
image scan reorders between layers."""

import pytest
import torch
import torch.nn.functional as F
from naive_reference import generate as naive_generate
from PIL import Image
from torch import nn
from transformers import CLIPVisionModel

from visualrwkv_eval import kernels
from visualrwkv_eval.model import Family, GenerationRequest, generate_batch, load_checkpoint, load_model
from visualrwkv_eval.model import families as families_module
from visualrwkv_eval.model.checkpoint import CheckpointError, rwkv6_config
from visualrwkv_eval.model.config import RWKV6Config
from visualrwkv_eval.model.families import FAMILIES, Recipe, register
from visualrwkv_eval.model.rwkv6 import RWKV6, Packing
from visualrwkv_eval.model.scan import run_layers
from visualrwkv_eval.model.tiny import clip_config, clip_processor, random_rwkv_weights
from visualrwkv_eval.model.vision import RELEASE_PREFIX, build_vision_tower

QUESTION = "What colour is the square?\nAnswer the question using a single word or phrase."
SHORT = "What colour is the square?"
TOY = Family("mlp-visualrwkv", 6)
MLP_KEYS = {"0.weight", "0.bias", "2.weight", "2.bias"}


# ---- the toy family: everything a new family needs ---------------------------------------------------------
class MLPProjector(nn.Sequential):
    """Linear, GELU, Linear (LLaVA-1.5's projector): checkpoint keys proj.0.*, proj.2.*."""

    def __init__(self, d: int, hidden: int, c: int):
        super().__init__(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, c))

    @staticmethod
    def from_weights(w: dict[str, torch.Tensor]) -> "MLPProjector":
        with torch.device("meta"):
            proj = MLPProjector(w["0.weight"].shape[1], w["0.weight"].shape[0], w["2.weight"].shape[0])
        proj.load_state_dict(w, assign=True)
        return proj


def read_config(path, rwkv, proj) -> RWKV6Config:
    if proj.keys() != MLP_KEYS:
        raise CheckpointError(f"{path}: the MLP projector needs {sorted(MLP_KEYS)}, got {sorted(proj)}")
    return rwkv6_config(path, rwkv, {})


def check_projector(ckpt, vision, tower: str) -> None:
    if ckpt.proj_weights["0.weight"].shape[1] != vision.hidden_size:
        raise CheckpointError(f"{ckpt.path}: the projector does not take {tower}'s features")


TOY_RECIPE = Recipe(
    read_config, RWKV6, build_vision_tower, MLPProjector.from_weights, default_scan="unidirectional",
    check_projector=check_projector, label="toy MLP-projector RWKV-6",
)  # fmt: skip


@pytest.fixture
def toy_family(monkeypatch):
    monkeypatch.setattr(families_module, "DETECTORS", list(families_module.DETECTORS))
    monkeypatch.setitem(FAMILIES, TOY, TOY_RECIPE)  # undone after the test, with DETECTORS
    register(TOY, TOY_RECIPE, detect=lambda rwkv, proj, vit: "0.weight" in proj)


# ---- a checkpoint of it --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    cfg, vcfg = RWKV6Config.for_size(2, 128), clip_config("tiny")
    torch.manual_seed(5)
    clip = CLIPVisionModel(vcfg)
    clip.save_pretrained(out / "vision_tower")
    clip_processor(vcfg.image_size).save_pretrained(out / "vision_tower")
    g = torch.Generator().manual_seed(6)
    D, hidden = vcfg.hidden_size, 96
    proj = {"0.weight": torch.randn(hidden, D, generator=g) / D**0.5, "0.bias": 0.1 * torch.randn(hidden, generator=g),
            "2.weight": torch.randn(128, hidden, generator=g) / hidden**0.5, "2.bias": 0.1 * torch.randn(128, generator=g)}  # fmt: skip
    sd = {f"rwkv.{k}": v for k, v in random_rwkv_weights(cfg, seed=7).items()}
    sd |= {f"proj.{k}": v for k, v in proj.items()}
    sd |= {
        f"vit.{RELEASE_PREFIX}{k.removeprefix(RELEASE_PREFIX)}": v.contiguous() for k, v in clip.state_dict().items()
    }
    torch.save(sd, out / "model.pth")
    return out


def image():
    im = Image.new("RGB", (90, 70), (20, 120, 200))
    im.paste((240, 200, 10), (10, 10, 50, 50))
    return im


def test_the_toy_family_is_detected_and_built_from_its_row(toy_family, toy_files):
    assert load_checkpoint(toy_files / "model.pth").family == TOY
    model = load_model(str(toy_files / "model.pth"), vision_tower=str(toy_files / "vision_tower"), dtype="float32")
    assert isinstance(model.proj, MLPProjector) and len(model.rwkv.blocks) == 2
    assert model.scan == "unidirectional" and model.image_position == "middle"  # the row's defaults


def test_without_its_row_the_file_is_refused(toy_files):
    with pytest.raises(CheckpointError, match="unexpected keys outside rwkv"):
        load_checkpoint(toy_files / "model.pth")  # read as VisualRWKV-6, whose projector is proj.weight alone


def test_toy_generation_equals_the_naive_recompute(toy_family, toy_files):
    model = load_model(str(toy_files / "model.pth"), vision_tower=str(toy_files / "vision_tower"), dtype="float32")
    sd = torch.load(toy_files / "model.pth", weights_only=True)
    w = {k[5:]: v.double() for k, v in sd.items() if k.startswith("proj.")}
    with torch.no_grad():
        hidden = model.vision.clip(pixel_values=model.vision.preprocess([image()])).last_hidden_state[0]
    feats = torch.cat([hidden[1:], hidden[:1]]).double()  # patches, then CLS
    feats = F.gelu(feats @ w["0.weight"].T + w["0.bias"]) @ w["2.weight"].T + w["2.bias"]
    tok = model.tokenizer
    rwkv = {k[5:]: v.double() for k, v in sd.items() if k.startswith("rwkv.")}
    before, after = tok.encode(f"User: {SHORT}\n"), tok.encode(f"\n{QUESTION}\n\n") + tok.encode("Assistant:")
    expected = naive_generate(rwkv, before, feats, after, model.vision.num_patches, "unidirectional", 10)
    got = generate_batch(model, [GenerationRequest(QUESTION, image(), max_new_tokens=10)])[0]
    assert got.new_tokens == expected and len(expected) >= 5


def test_the_adapter_serves_the_toy_family_unchanged(toy_family, toy_files):
    from visualrwkv_eval.lmms_model import VisualRWKVLmms

    lm = VisualRWKVLmms(pretrained=str(toy_files / "model.pth"), vision_tower=str(toy_files / "vision_tower"),
                        dtype="float32", device="cpu", batch_size=2)  # fmt: skip
    assert isinstance(lm.model.proj, MLPProjector) and lm.model.scan == "unidirectional"


# ---- the parts under a family ------------------------------------------------------------------------------------
def test_kernels_registry_returns_an_ops_pair(monkeypatch):
    from visualrwkv_eval.kernels.wkv6.reference import wkv6_decode_torch, wkv6_prefill_torch

    assert kernels.get("wkv6", "torch") == (wkv6_prefill_torch, wkv6_decode_torch)
    with pytest.raises(ValueError, match="op='wkv9'"):
        kernels.get("wkv9", "torch")
    monkeypatch.setitem(kernels.OPS, "wkv9", {"torch": ("wkv6.reference", "wkv6_decode_torch", "wkv6_prefill_torch")})
    assert kernels.get("wkv9", "torch") == (wkv6_decode_torch, wkv6_prefill_torch)  # a new op is one table row


class TaggedLM(nn.Module):
    """A language model whose rows carry their original index in column 0, and whose layer 0 starts a per-row carry
    (as RWKV-7's v_first); every layer checks that carry and rows arrive in the same order, and mixes rows by
    a running sum, which depends on the order the scan gives them."""

    def __init__(self, n_layer: int):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Identity() for _ in range(n_layer))
        self.seen: list[list[int]] = []

    def cpu_layout_(self) -> None:
        pass

    def block(self, layer, x, state, pack, carry=()):
        if layer == 0:
            carry = (x[:, :1].clone(),)
        assert torch.equal(carry[0][:, 0], x[:, 0])  # the carry is reordered with the rows
        self.seen.append(x[:, 0].long().tolist())
        return torch.cat([x[:, :1], x[:, 1:] + x[:, 1:].cumsum(0)], 1), carry


def test_scan_reorders_rows_and_carry_together():
    lm = TaggedLM(4)
    x = torch.cat([torch.arange(10.0)[:, None], torch.ones(10, 1)], 1)
    rev = torch.tensor([0, 1, 2, 3, 7, 6, 5, 4, 8, 9])  # one layer reads rows 4..7 reversed
    out = run_layers(lm, x, None, Packing.for_decode(), [None, rev, None, rev])
    assert lm.seen == [list(range(10)), rev.tolist(), list(range(10)), rev.tolist()]
    expected = x.clone()
    for order in (None, rev, None, rev):  # the same layers written out: gather, running sum, scatter back
        idx = torch.arange(10) if order is None else order
        y = expected[idx]
        y[:, 1:] += y[:, 1:].cumsum(0)
        expected[idx] = y
    assert torch.equal(out, expected)
