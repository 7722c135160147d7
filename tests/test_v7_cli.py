"""VisualRWKV-7 through the command line: `make-tiny --family v7` and the v7 sizes of `bench length|eval|roofline`.

Expected shapes and sizes are written down here from the reference's files (github.com/howard-hou/VisualRWKV,
VisualRWKV-v7/v7.00: src/model.py for the language model and projector, src/vision.py and src/sam.py for the towers
built by timm and SAM), not read back from this project's shape tables."""

import json
import math
import subprocess
import sys

import pytest
import torch

from visualrwkv_eval.cli import main
from visualrwkv_eval.model.tiny import make_tiny, tower_geometry7
from visualrwkv_eval.model.tiny7 import SIZES7, size_config7
from visualrwkv_eval.model.vision7_weights import expected_shapes


def load(path):
    return torch.load(path / "model.pth", weights_only=True)


def test_tiny_v7_is_deterministic_per_seed(tmp_path):
    a, b, c = (make_tiny(tmp_path / n, seed=s, family="v7") for n, s in (("a", 3), ("b", 3), ("c", 4)))
    assert (a / "model.pth").read_bytes() == (b / "model.pth").read_bytes()
    sa, sc = load(a), load(c)
    assert sa.keys() == sc.keys()
    assert not any(torch.equal(sa[k], sc[k]) for k in ("rwkv.emb.weight", "proj.gate.weight",
                                                       "vit.dino_featurizer.pos_embed"))  # fmt: skip
    assert not (a / "vision_tower").exists()  # the towers are in the file


def test_tiny_v7_has_the_release_key_format(tmp_path):
    sd = load(make_tiny(tmp_path, seed=0, family="v7"))
    # the trainer saves the module's state_dict: attribute order rwkv, vit, proj (src/model.py, VisualRWKV)
    assert list(dict.fromkeys(k.split(".")[0] for k in sd)) == ["rwkv", "vit", "proj"]
    assert {k.split(".")[1] for k in sd if k.startswith("vit.")} == {"dino_featurizer", "siglip_featurizer",
                                                                    "sam_featurizer"}  # fmt: skip
    C, H = 128, 2  # tiny: 2 layers, width 128, heads of 64
    want = {
        "rwkv.emb.weight": [65536, C], "rwkv.head.weight": [65536, C], "rwkv.blocks.0.ln0.weight": [C],
        "rwkv.blocks.1.att.r_k": [H, 64], "rwkv.blocks.1.att.v1": [C, 32], "rwkv.blocks.1.att.w0": [1, 1, C],
        "rwkv.blocks.0.att.g1": [C, 32], "rwkv.blocks.1.ffn.key.weight": [4 * C, C],
        "rwkv.blocks.1.ffn.value.weight": [C, 4 * C], "rwkv.ln_out.bias": [C],
        # the tiny towers: DINOv2 128 wide + SigLIP 144 wide + SAM 16 channels x 4 after space-to-depth = 336
        "proj.gate.weight": [336, 336], "proj.o_proj.weight": [C, 336], "proj.ln_v.bias": [C],
        "vit.dino_featurizer.reg_token": [1, 4, 128], "vit.dino_featurizer.pos_embed": [1, 16, 128],
        "vit.siglip_featurizer.pos_embed": [1, 16, 144], "vit.sam_featurizer.neck.0.weight": [16, 64, 1, 1],
    }  # fmt: skip
    assert {k: list(sd[k].shape) for k in want} == want
    assert "rwkv.blocks.0.att.v1" not in sd and "rwkv.blocks.2.ln1.weight" not in sd  # layer 0: no value residual
    assert {t.dtype for t in sd.values()} == {torch.float32}


# LM parameters of the released language models' shapes, counted here from RWKV-7's parts: per layer six lerps,
# w0/a0/v0, k_k/k_a, r_k, 4 C x C, the four LoRAs (no v-LoRA in layer 0), ln_x, ln1/ln2, the 4C channel mix
def rwkv7_parameters(L: int, C: int, dw: int, da: int, dv: int, dg: int) -> int:
    per_layer = 6 * C + 3 * C + 2 * C + C + 4 * C * C + 2 * C * (dw + da + dv + dg) + 2 * C + 4 * C + 8 * C * C + C
    return L * per_layer - (C + 2 * C * dv) + 2 * 65536 * C + 2 * C + 2 * C  # layer 0 v-LoRA; emb, head, ln0, ln_out


# parameters of the reference's towers as timm 1.0.12 and src/sam.py build them (DINOv2-L/14-reg4 and SigLIP
# SO400M/14 at 448 px, SAM ViT-B at 1024 px): 304,017,408 + 428,565,440 + 89,670,912
RELEASE_TOWERS = 304_017_408 + 428_565_440 + 89_670_912


@pytest.mark.parametrize(
    ("size", "shape", "gigabytes"),
    [("0b1", (12, 768, 64, 64, 32, 128), 2.05), ("0b4", (24, 1024, 64, 64, 32, 128), 2.57),
     ("1b5", (24, 2048, 96, 96, 64, 256), 4.73)],
)  # fmt: skip
def test_real_v7_sizes_are_the_releases(size, shape, gigabytes):
    """make-tiny --family v7 --size 0b1|0b4|1b5 writes these shapes in bf16: the file has the size expected of a
    released checkpoint that holds its towers (2.05 / 2.57 / 4.73 GB)."""
    L, C, *ranks = shape
    cfg = size_config7(size)
    assert (cfg.n_layer, cfg.n_embd, cfg.d_decay, cfg.d_aaa, cfg.d_mv, cfg.d_gate) == shape
    lm = sum(math.prod(s) for s in cfg.expected_shapes().values())
    assert lm == rwkv7_parameters(L, C, *ranks)
    geometry = tower_geometry7(size)
    assert (geometry.num_tokens, geometry.hidden_size) == (1024, 3200)
    assert sum(math.prod(s) for s in expected_shapes(geometry).values()) == RELEASE_TOWERS
    projector = 3200 * 3200 + C * 3200 + 2 * C
    assert abs(2 * (lm + RELEASE_TOWERS + projector) / 1e9 - gigabytes) < 0.01


def test_size_names_without_torch_match_the_table():
    from visualrwkv_eval.bench import SIZE_NAMES7, family_of

    assert SIZE_NAMES7 == tuple(SIZES7)
    assert [family_of(s) for s in ("tiny", "7b", "0b1", "1b5")] == ["v6", "v6", "v7", "v7"]
    assert family_of("tiny", "v7") == "v7"
    with pytest.raises(SystemExit, match="not a v6 size"):
        family_of("0b4", "v6")


@pytest.mark.parametrize(("args", "message"), [(["--family", "v7", "--size", "7b"], "7b is not one of its sizes"),
                                               (["--size", "0b1"], "0b1 is not one of its sizes")])  # fmt: skip
def test_make_tiny_refuses_a_size_of_the_other_family(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        main(["make-tiny", str(tmp_path / "x"), *args])
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # a CLI process
def test_cli_writes_what_make_tiny_writes(tmp_path):
    subprocess.run([sys.executable, "-m", "visualrwkv_eval.cli", "make-tiny", str(tmp_path / "cli"), "--family", "v7",
                    "--seed", "5"], check=True, capture_output=True)  # fmt: skip
    make_tiny(tmp_path / "api", seed=5, family="v7")
    assert (tmp_path / "cli" / "model.pth").read_bytes() == (tmp_path / "api" / "model.pth").read_bytes()


def test_bench_eval_v7_matches_the_padded_reference_protocol(tmp_path):
    """bench eval on the tiny VisualRWKV-7: the stateful answers (exact padding) equal its reference protocol, the
    whole sequence re-run after (-T) % 16 pads for every token, at batch 1 and batched."""
    main(["bench", "eval", "--family", "v7", "--size", "tiny", "--device", "cpu", "--samples", "4",
          "--batch-sizes", "3", "--out", str(tmp_path)])  # fmt: skip
    result = json.loads((tmp_path / "eval_tiny_v7.json").read_text())
    assert (result["family"], result["padding"], result["complete"]) == ("v7", "exact", True)
    assert result["answers_match_reference"] is True and result["batch_agreement"] == {"3": 1.0}
    assert "image-first" in result["workload"]


def test_bench_roofline_v7(tmp_path):
    main(["bench", "roofline", "--family", "v7", "--size", "tiny", "--device", "cpu", "--prompt", "32", "--steps",
          "2", "--out", str(tmp_path)])  # fmt: skip
    result = json.loads((tmp_path / "roofline_tiny_v7.json").read_text())
    assert (result["family"], result["padding"], result["size"]) == ("v7", "once", "tiny")
    cfg = size_config7("tiny")
    embedding = cfg.vocab_size * cfg.n_embd
    assert result["language_model_parameters"] == sum(math.prod(s) for s in cfg.expected_shapes().values())
    # the blocks on every row, the head (embedding-sized) on the last of the 32 only
    blocks = result["language_model_parameters"] - 2 * embedding
    assert result["prefill"]["flop_per_token"] == pytest.approx(2 * blocks + 2 * embedding / 32)
    assert (tmp_path / "roofline_tiny_v7.png").stat().st_size > 1000


@pytest.mark.slow  # a Llama baseline is built, twice
def test_bench_length_v7(tmp_path):
    def run(padding):
        main(["bench", "length", "--family", "v7", "--size", "tiny", "--device", "cpu", "--lengths", "32,64",
              "--steps", "2", "--padding", padding, "--out", str(tmp_path / padding)])  # fmt: skip
        return json.loads((tmp_path / padding / "length_tiny_v7.json").read_text())

    once, exact = run("once"), run("exact")
    assert once["family"] == "v7" and once["transformer"]["config"]["num_hidden_layers"] == 2
    # the recurrent state of 2 layers at width 128: two token-shift rows and 2 heads of 64 x 64 fp32 per layer
    state = 2 * (2 * 128 * 4 + 2 * 64 * 64 * 4) / 2**20
    assert [p["state_mib"] for p in once["visualrwkv"]["points"]] == [state, state]
    # exact padding keeps the rows (T + the decoded tokens, 128 fp32 each) and a chain per pad count used so far:
    # the prefill's, then one per timed step (3 warm-up + 2) as the pad count changes with every token
    rows = [(n + 5) * 128 * 4 / 2**20 for n in (32, 64)]
    assert [p["state_mib"] for p in exact["visualrwkv"]["points"]] == pytest.approx([r + 6 * state for r in rows])
