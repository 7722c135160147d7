"""Misuse never gives a silent bad run: every case of issue #11 (and a few more), table-driven.

Each row: what is done wrong, the error type, and a pattern that names the culprit (argument and value, tensor,
file kind, task and document). Settings must fail before the checkpoint is read: those rows point `pretrained`
at a file that does not exist, so a late check would show up as "checkpoint not found" instead.
"""

import copy
import json
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from PIL import Image
from safetensors.torch import load_file, save_file

from visualrwkv_eval import lmms_model as adapter
from visualrwkv_eval.model import CheckpointError, NonFiniteLogitsError, VisionTowerError, load_checkpoint, load_model
from visualrwkv_eval.model.visualrwkv import api_image, api_until
from visualrwkv_eval.settings import SettingError, generation_settings

QUESTION = "What color is the square?\nAnswer the question using a single word or phrase."


def image(seed: int = 1) -> Image.Image:
    return Image.new("RGB", (40 + seed, 50), (seed * 20 % 255, 80, 160))


# ---- 1. model_args: refused before the checkpoint is read -------------------------------------------------
MODEL_ARGS = [
    (dict(batch_size=-3), r"batch_size=-3: expected a whole number >= 1, or auto"),
    (dict(batch_size="-3"), r"batch_size='-3': expected a whole number >= 1, or auto"),  # as the CLI sends it
    (dict(batch_size="0"), r"batch_size='0'"),
    (dict(batch_size="big"), r"batch_size='big'"),
    (dict(batch_size="auto", max_batch_size=-1), r"max_batch_size=-1: expected a whole number >= 1"),
    (dict(batch_size=4, max_batch_size=0), r"max_batch_size=0"),
    (dict(max_new_tokens=0), r"max_new_tokens=0: expected a whole number >= 1"),
    (dict(max_new_tokens=-1), r"max_new_tokens=-1"),
    (dict(max_new_tokens="ten"), r"max_new_tokens='ten'"),
    (dict(max_new_tokens=True), r"max_new_tokens=True"),
    (dict(dtype="fp16"), r"dtype='fp16': expected one of bfloat16, float16, float32"),
    (dict(device="gpu"), r"device='gpu': not a torch device"),
    (dict(scan="diagonal"), r"scan='diagonal': expected one of"),
    (dict(image_position="top"), r"image_position='top': expected one of middle"),
    (dict(kernel="fast"), r"kernel='fast': expected one of auto"),
    (dict(temprature=0), r"unknown model_args \['temprature'\]"),
    (dict(image_workers=-1), r"image_workers=-1: expected a whole number >= 0 \(0: prepare inline\)"),
    (dict(image_workers="two"), r"image_workers='two': expected a whole number >= 0"),
]


@pytest.mark.parametrize(("kwargs", "pattern"), MODEL_ARGS, ids=[str(k) for k, _ in MODEL_ARGS])
def test_model_args_fail_before_loading(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        adapter.VisualRWKVLmms(pretrained=str(tmp_path / "absent.pth"), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(tmp_path):
    """Asked for explicitly, a GPU that is not there is an error (no silent hours-long CPU run)."""
    with pytest.raises(ValueError, match=r"device=cuda:0: CUDA is not available here"):
        load_model(str(tmp_path / "absent.pth"), device="cuda:0")
    with pytest.raises(ValueError, match=r"device=cuda: CUDA is not available here"):
        adapter.VisualRWKVLmms(pretrained=str(tmp_path / "absent.pth"), device="cuda")


def test_valid_batch_settings(demo_dir):
    tiny = demo_dir / "tiny"
    args = dict(pretrained=str(tiny / "model.pth"), vision_tower=str(tiny / "vision_tower"))
    assert adapter.VisualRWKVLmms(**args, batch_size="3").batch_size == 3
    assert adapter.VisualRWKVLmms(**args, batch_size="auto:2", max_batch_size=5).batch_size <= 5
    adapter.VisualRWKVLmms(**args, image_workers="0")  # 0: images prepared inline, a valid setting


# ---- 2. gen_kwargs: refused when the requests arrive, before any answer -----------------------------------
GEN_KWARGS = [
    ({"max_new_tokens": 0}, SettingError, r"gen_kwargs max_new_tokens=0 \(task t\): expected a whole number >= 1"),
    ({"max_new_tokens": -1}, SettingError, r"max_new_tokens=-1"),
    ({"max_new_tokens": 2.5}, SettingError, r"max_new_tokens=2\.5"),
    ({"max_new_tokens": "many"}, SettingError, r"max_new_tokens='many'"),
    ({"temperature": -1, "do_sample": True}, SettingError, r"temperature=-1\.0 \(task t\): expected a number >= 0"),
    ({"temperature": float("nan")}, SettingError, r"temperature=nan \(task t\): expected a finite number"),
    ({"temperature": "hot"}, SettingError, r"temperature='hot'"),
    ({"do_sample": True, "temperature": 1, "top_p": -0.5}, SettingError, r"top_p=-0\.5 \(task t\): .* in \[0, 1\]"),
    ({"top_p": 1.5}, SettingError, r"top_p=1\.5 \(task t\): expected a number in \[0, 1\]"),
    ({"until": 5}, SettingError, r"until=5 \(task t\): expected a string or a list of strings"),
    ({"until": ["\n\n", 3]}, SettingError, r"until=\['\\n\\n', 3\]"),
    ({"do_sample": "maybe"}, SettingError, r"do_sample='maybe'"),
    ({"num_beams": 4}, SettingError, r"num_beams=4 \(task t\): .*beam search is not implemented"),
]


@pytest.mark.parametrize(("gen_kwargs", "error", "pattern"), GEN_KWARGS, ids=[str(g) for g, _, _ in GEN_KWARGS])
def test_bad_gen_kwargs(gen_kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        generation_settings(gen_kwargs, 128, "t")


GOOD_GEN_KWARGS = [  # as lmms-eval's own YAMLs send them
    ({"temperature": 0, "top_p": 0, "num_beams": 1, "do_sample": False}, dict(temperature=0.0, top_p=1.0)),  # POPE
    ({"temperature": None, "top_p": None, "num_beams": None}, dict(temperature=0.0, top_p=1.0)),
    ({"until": "zzzh"}, dict(until=("zzzh",))),  # a str is one stop string, not four
    ({"until": ["\n\n", "X"], "max_new_tokens": 16.0}, dict(until=("\n\n", "X"), max_new_tokens=16)),
    ({"do_sample": True, "temperature": 0.7, "top_p": 0.9}, dict(temperature=0.7, top_p=0.9)),
    ({"do_sample": "true"}, dict(temperature=1.0)),  # --gen_kwargs do_sample=true
    ({"do_sample": True, "temperature": 0.2, "top_p": 0}, dict(temperature=0.2, top_p=0.0)),  # ConBench: top-1
]


@pytest.mark.parametrize(("gen_kwargs", "expected"), GOOD_GEN_KWARGS, ids=[str(g) for g, _ in GOOD_GEN_KWARGS])
def test_good_gen_kwargs(gen_kwargs, expected):
    got = generation_settings(gen_kwargs, 128, "t")
    assert {k: got[k] for k in expected} == expected


class FakeTask:
    """Requests as lmms-eval builds them, over docs held in the adapter's task_dict."""

    def __init__(self, model, docs, task="fake", split="test"):
        model.task_dict = {task: {split: docs}}
        self.task, self.split = task, split

    def generate(self, doc_id, **gen_kwargs):
        args = (QUESTION, gen_kwargs, lambda doc: doc["visuals"](), doc_id, self.task, self.split)
        return Instance("generate_until", args, doc_id, {"task": self.task, "doc_id": doc_id, "repeats": 1})

    def loglikelihood(self, doc_id):
        args = (QUESTION, " red", lambda doc: doc["visuals"](), doc_id, self.task, self.split)
        return Instance("loglikelihood", args, doc_id, {"task": self.task, "doc_id": doc_id, "repeats": 1})


@pytest.fixture
def no_answers(monkeypatch):
    """Counts the batches the adapter gives the model: a set-up or setting error must come before any."""
    calls = []
    for name in ("generate_batch", "loglikelihood_batch"):
        real = getattr(adapter, name)
        monkeypatch.setattr(adapter, name, lambda *a, real=real, **k: calls.append(1) or real(*a, **k))
    return calls


def test_a_bad_gen_kwarg_in_a_later_request_stops_before_any_answer(lmms_model, no_answers):
    task = FakeTask(lmms_model, [{"visuals": lambda: [image(1)]}, {"visuals": lambda: [image(2)]}])
    with pytest.raises(SettingError, match=r"max_new_tokens=0 \(task fake\)"):
        lmms_model.generate_until([task.generate(0, max_new_tokens=8), task.generate(1, max_new_tokens=0)])
    assert no_answers == []


# ---- 3. set-up errors: one error for the run, not one warning per document ----------------------------------
@pytest.fixture(scope="module")
def text_only_path(demo_dir, tmp_path_factory):
    """The demo's tiny model as a plain RWKV-LM x060 file: no projector, no tower."""
    sd = torch.load(demo_dir / "tiny" / "model.pth", weights_only=True)
    path = tmp_path_factory.mktemp("text_only") / "rwkv.pth"
    torch.save({k[5:]: v for k, v in sd.items() if k.startswith("rwkv.")}, path)
    return path


@pytest.fixture(scope="module")
def text_only(text_only_path):
    return adapter.VisualRWKVLmms(pretrained=str(text_only_path))


@pytest.mark.parametrize("kind", ["generate_until", "loglikelihood"])
def test_image_task_on_a_text_only_checkpoint(text_only, no_answers, kind):
    task = FakeTask(text_only, [{"visuals": lambda: []}, {"visuals": lambda: [image(3)]}], task="vqa")
    make = task.generate if kind == "generate_until" else task.loglikelihood
    with pytest.raises(
        adapter.SetupError, match=r"vqa doc 1 sends an image, but pretrained=.*rwkv\.pth is a text-only"
    ):
        getattr(text_only, kind)([make(0), make(1)])
    assert no_answers == []


def test_text_task_on_a_text_only_checkpoint_still_answers(text_only):
    task = FakeTask(text_only, [{"visuals": lambda: []}])
    (out,) = text_only.generate_until([task.generate(0, max_new_tokens=4)])
    assert out.token_counts.output_tokens >= 1


def tower_copy(tiny_dir, tmp_path, preprocessor=None, config=None):
    tower = tmp_path / "tower"
    shutil.copytree(tiny_dir / "vision_tower", tower)
    for name, change in (("preprocessor_config.json", preprocessor), ("config.json", config)):
        if change:
            data = json.loads((tower / name).read_text())
            (tower / name).write_text(json.dumps(change(data)))
    return tower


def with_keys(d: dict, **kw) -> dict:
    return {**d, **kw}


BROKEN_TOWERS = [  # (preprocessor change, config change, pattern)
    (lambda p: with_keys(p, size={"shortest_edge": 0}), None, r"fails on a plain 64x48 RGB image: ValueError"),
    (lambda p: with_keys(p, crop_size={"height": 32, "width": 32}), None, r"pixels of shape \(1, 3, 32, 32\).*56"),
    (lambda p: with_keys(p, image_std=[0, 0, 0]), None, r"non-finite pixel values"),
    (None, lambda c: with_keys(c, model_type="siglip_vision_model"), r"model_type 'siglip_vision_model'"),
    (None, lambda c: with_keys(c, model_type="vit"), r"not a CLIP vision config \(config\.json has model_type 'vit'\)"),
    (None, lambda c: {"model_type": "bert", "hidden_size": 64, "vocab_size": 100}, r"model_type 'bert'"),
    (None, lambda c: {"model_type": "llama", "hidden_size": 64}, r"model_type 'llama'"),
]


@pytest.mark.parametrize(("pre", "cfg", "pattern"), BROKEN_TOWERS, ids=[p for *_, p in BROKEN_TOWERS])
def test_broken_or_foreign_towers_fail_at_load(tiny_dir, tmp_path, pre, cfg, pattern):
    tower = tower_copy(tiny_dir, tmp_path, pre, cfg)
    with pytest.raises(VisionTowerError, match=f"vision tower {re.escape(str(tower))}: .*{pattern}"):
        load_model(str(tiny_dir / "model.pth"), vision_tower=str(tower), dtype="float32")


# ---- 4. weights and files refused at load ------------------------------------------------------------------
def tiny_state_dict(tiny_dir) -> dict:
    return torch.load(tiny_dir / "model.pth", weights_only=True)


def poison(key: str, value: float):
    def change(sd):
        sd[key] = sd[key].clone()
        sd[key].view(-1)[3] = value
        return sd

    return change


def other_vocab(sd):
    for key in ("rwkv.emb.weight", "rwkv.head.weight"):
        sd[key] = sd[key][:65000].clone()
    return sd


def int_tensor(sd):
    sd["rwkv.blocks.0.att.time_faaaa"] = sd["rwkv.blocks.0.att.time_faaaa"].long()
    return sd


BAD_WEIGHTS = [
    (poison("rwkv.blocks.1.att.key.weight", math.nan), r"non-finite weights .* rwkv\.blocks\.1\.att\.key\.weight \(1 NaN"),
    (poison("proj.weight", math.inf), r"non-finite weights .* proj\.weight \(0 NaN, 1 inf\)"),
    (poison("vit.vision_model.encoder.layers.0.mlp.fc1.weight", -math.inf), r"vit\.vision_model\.encoder\.layers\.0\.mlp"),
    (other_vocab, r"vocabulary of 65000 tokens; .*World tokenizer, which needs exactly 65536"),
    (int_tensor, r"non-floating dtype: rwkv\.blocks\.0\.att\.time_faaaa \(torch\.int64\)"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "pattern"), BAD_WEIGHTS, ids=[p[:30] for _, p in BAD_WEIGHTS])
@pytest.mark.parametrize(("suffix", "stored"), [(".pth", torch.float32), (".safetensors", torch.bfloat16)])
def test_bad_weights_are_refused(tiny_dir, tmp_path, change, pattern, suffix, stored):
    """fp32 on CPU checks the loaded weights, bf16 widened to fp32 checks the file's (the narrower copy)."""
    path = tmp_path / f"m{suffix}"
    sd = {k: v.to(stored) if v.is_floating_point() else v for k, v in change(tiny_state_dict(tiny_dir)).items()}
    torch.save(sd, path) if suffix == ".pth" else save_file({k: v.contiguous() for k, v in sd.items()}, path)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}: .*{pattern}"):
        load_model(str(path), vision_tower=str(tiny_dir / "vision_tower"))


def test_nonfinite_tower_folder_weights(tiny_dir, tmp_path):
    tower = tower_copy(tiny_dir, tmp_path)
    weights = load_file(tower / "model.safetensors")
    (key,) = [k for k in weights if k.endswith("layers.0.mlp.fc1.weight")]  # with or without vision_model.
    weights[key][0, 0] = math.nan
    save_file(weights, tower / "model.safetensors")
    sd = {k: v for k, v in tiny_state_dict(tiny_dir).items() if not k.startswith("vit.")}
    torch.save(sd, tmp_path / "novit.pth")
    with pytest.raises(VisionTowerError, match=r"non-finite weights .*layers\.0\.mlp\.fc1\.weight"):
        load_model(str(tmp_path / "novit.pth"), vision_tower=str(tower))


def test_float16_overflow_is_refused(tiny_dir, tmp_path):
    torch.save(poison("rwkv.blocks.0.ffn.value.weight", 1e6)(tiny_state_dict(tiny_dir)), tmp_path / "m.pth")
    with pytest.raises(
        CheckpointError,
        match=r"overflow torch\.float16 when converted: rwkv\.blocks\.0\.ffn\.value\.weight \(0 NaN, 1 inf\)",
    ):
        load_model(str(tmp_path / "m.pth"), vision_tower=str(tiny_dir / "vision_tower"), dtype="float16")


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"4d" * 32 + b"\nsize 3510000000\n"
HTML = b"\n<!DOCTYPE html>\n<html lang='en'><head><title>Hugging Face</title></head><body>...</body></html>"
BAD_FILES = [  # (file name, bytes, pattern)
    ("lfs.pth", LFS_POINTER, r"is a Git LFS pointer file \(\d+ bytes\), not the weights: .*run `git lfs pull`"),
    ("lfs.safetensors", LFS_POINTER, r"is a Git LFS pointer file"),
    ("page.pth", HTML, r"is an HTML page \(\d+ bytes\), not a checkpoint: .*download it again"),
    ("page.safetensors", HTML, r"is an HTML page"),
    ("random.pth", bytes(np.random.default_rng(0).integers(1, 120, 4096, dtype=np.uint8)),
     r"not a PyTorch checkpoint \(neither a zip archive nor a legacy torch file"),
    ("pickle-like.pth", b"\x80" + bytes(np.random.default_rng(1).integers(0, 256, 4095, dtype=np.uint8)),
     r"truncated or corrupt checkpoint \(UnpicklingError: its pickle is damaged\)"),
    ("random.safetensors", b"\x00" * 64, r"not a safetensors file"),
    ("empty.pth", b"", r"is empty \(0 bytes\): download it again"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "pattern"), BAD_FILES, ids=[n for n, _, _ in BAD_FILES])
def test_files_that_are_no_checkpoint_say_what_they_are(tmp_path, name, data, pattern):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CheckpointError, match=pattern) as err:
        load_checkpoint(tmp_path / name)
    assert str(tmp_path / name) in str(err.value) and "unpickles code" not in str(err.value)


def test_pretrained_with_a_tilde(tiny_dir, tmp_path, monkeypatch):
    shutil.copy(tiny_dir / "model.pth", tmp_path / "m.pth")
    monkeypatch.setenv("HOME", str(tmp_path))
    model = load_model("~/m.pth", vision_tower=str(tiny_dir / "vision_tower"))
    assert model.vision is not None


# ---- 5. mmap policy: a loaded model never reads its files again ---------------------------------------------
def overwrite_in_place(path):
    """Overwrite every byte, keeping the size (as an in-place re-download or copy does): 0xff bytes are NaN
    in every float format, so any weight still read from the file shows, zeros included."""
    with open(path, "r+b") as f:
        f.write(b"\xff" * path.stat().st_size)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loaded_weights_do_not_follow_the_file(tiny_dir, tmp_path, suffix):
    """At the stored dtype on CPU nothing converts the weights, so the load must copy them: rewriting the
    checkpoint and the tower's own weights file changes nothing, truncating them kills nothing (no SIGBUS)."""
    tower = tower_copy(tiny_dir, tmp_path)
    sd = {k: v for k, v in tiny_state_dict(tiny_dir).items() if not k.startswith("vit.")}
    path = tmp_path / f"m{suffix}"
    torch.save(sd, path) if suffix == ".pth" else save_file(sd, path)
    model = load_model(str(path), vision_tower=str(tower), dtype="float32", device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    answer = model.generate(QUESTION, [image(4)], max_new_tokens=6)
    for f in (path, tower / "model.safetensors"):
        overwrite_in_place(f)
    after = model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    for f in (path, tower / "model.safetensors"):
        os.truncate(f, 0)
    assert model.generate(QUESTION, [image(4)], max_new_tokens=6) == answer


# ---- 6. the Python API --------------------------------------------------------------------------------------
API_MISUSE = [
    (dict(max_new_tokens=0), ValueError, r"max_new_tokens=0: expected a whole number >= 1"),
    (dict(max_new_tokens=-1), ValueError, r"max_new_tokens=-1"),
    (dict(max_new_tokens=2.5), ValueError, r"max_new_tokens=2\.5"),
    (dict(temperature=1.0, top_p=-0.1), ValueError, r"top_p=-0\.1: expected a number in \[0, 1\]"),
    (dict(top_p=1.5), ValueError, r"top_p=1\.5"),
    (dict(temperature=-1), ValueError, r"temperature=-1: expected a finite number >= 0"),
    (dict(temperature=float("nan")), ValueError, r"temperature=nan"),
    (dict(top_k=5), TypeError, r"unknown keywords \['top_k'\]"),
    (dict(until=5), TypeError, r"until=5: expected a string or a list of strings"),
    (dict(images=np.zeros((8, 8, 3), dtype=np.float32)), TypeError, r"numpy array of dtype float32 .* not an image"),
    (dict(images=torch.zeros(3, 8, 8)), TypeError, r"got a torch\.Tensor of shape \(3, 8, 8\); pass a PIL image"),
    (dict(images="cat.png"), TypeError, r"images: expected a PIL image, .* got str"),
]


@pytest.mark.parametrize(("kwargs", "error", "pattern"), API_MISUSE, ids=[str(k)[:40] for k, _, _ in API_MISUSE])
def test_python_api_misuse(tiny_model, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        tiny_model.generate(QUESTION, **kwargs)


def test_python_api_accepts_what_it_documents(tiny_model):
    im = image(5)
    full = tiny_model.generate(QUESTION, [im], max_new_tokens=12)
    assert full  # the fidelity model (no stop prior) always says something
    assert tiny_model.generate(QUESTION, im, max_new_tokens=12) == full  # a bare PIL image
    assert tiny_model.generate(QUESTION, np.asarray(im), max_new_tokens=12) == full  # a uint8 HxWx3 array
    # a str until is one stop string: split into characters it would stop at the answer's first character
    assert tiny_model.generate(QUESTION, [im], max_new_tokens=12, until=full[0] + "zzzh") == full
    # top_p 0 keeps the most likely token only (HF's rule; it used to crash in torch.multinomial)
    assert tiny_model.generate(QUESTION, [im], max_new_tokens=12, temperature=1.0, top_p=0, seed=3) == full
    assert api_until("zzzh") == ("zzzh",) and api_until(["a", "b"]) == ("a", "b") and api_until(None) == ()
    assert api_image([]) is None and api_image(np.zeros((4, 5), dtype=np.uint8)).size == (5, 4)


def test_image_to_a_text_only_model(text_only):
    with pytest.raises(ValueError, match=r"no vision tower and projector .*text only"):
        text_only.model.generate(QUESTION, [image(1)])


# ---- 7. non-finite logits stop the run, naming task and document --------------------------------------------
@pytest.fixture
def broken_adapter(demo_dir):
    """An adapter whose weights went NaN after loading (what an overflow in the forward pass also gives)."""
    tiny = demo_dir / "tiny"
    lm = adapter.VisualRWKVLmms(
        pretrained=str(tiny / "model.pth"), vision_tower=str(tiny / "vision_tower"), batch_size=2
    )
    with torch.no_grad():
        lm.model.rwkv.head.weight[7] = math.nan
    return lm


def test_nonfinite_logits_name_task_and_document(broken_adapter):
    task = FakeTask(broken_adapter, [{"visuals": lambda: [image(6)]}], task="vqav2_val")
    with pytest.raises(NonFiniteLogitsError, match=r"for vqav2_val doc 0 at generated token 1"):
        broken_adapter.generate_until([task.generate(0, max_new_tokens=4)])
    with pytest.raises(NonFiniteLogitsError, match=r"when scoring a continuation"):
        broken_adapter.loglikelihood([task.loglikelihood(0)])


def test_nonfinite_logits_in_the_python_api(tiny_model):
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.rwkv.head.weight[3] = math.inf
    with pytest.raises(NonFiniteLogitsError, match=r"non-finite logits \(NaN or inf\) for request 0 of the batch"):
        model.generate(QUESTION, [image(1)], max_new_tokens=4)


# ---- 8. through the real CLI: the error is in the log's last lines and no results are written ---------------
def run_cli(demo_dir, tmp_path, pretrained, *extra, debug=True):
    from visualrwkv_eval.cli import lmms_eval_command, offline_env

    out = tmp_path / "out"
    cmd = lmms_eval_command(pretrained, demo_dir / "tiny" / "vision_tower", "visualrwkv_mini_pope", out,
                            "--limit", "2", "--log_samples", *(["--verbosity", "DEBUG"] if debug else []), *extra,
                            include_path=demo_dir / "tasks")  # fmt: skip
    # one stream, as a terminal or a log file shows it
    proc = subprocess.run(cmd, env=offline_env(demo_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)  # fmt: skip
    written = sorted(p.name for p in out.rglob("*.json*")) if out.exists() else []
    return proc, proc.stdout.strip().splitlines()[-8:], written


CLI_CASES = [  # (extra arguments, text-only checkpoint?, pattern)
    (["--batch_size", "-3"], False, r"batch_size='-3': expected a whole number >= 1, or auto"),
    (["--gen_kwargs", "max_new_tokens=0"], False, r"gen_kwargs max_new_tokens=0 \(task visualrwkv_mini_pope\)"),
    ([], True, r"visualrwkv_mini_pope doc \d+ sends an image, but pretrained=.* is a text-only"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "text_only_ckpt", "pattern"), CLI_CASES, ids=["batch_size", "gen_kwargs", "text"])
def test_cli_stops_without_results(demo_dir, text_only_path, tmp_path, extra, text_only_ckpt, pattern):
    """With --verbosity DEBUG lmms-eval exits non-zero; either way the error ends the log and no results (which
    would score empty answers) are written."""
    pretrained = text_only_path if text_only_ckpt else demo_dir / "tiny" / "model.pth"
    proc, tail, written = run_cli(demo_dir, tmp_path, pretrained, *extra)
    assert proc.returncode != 0, tail
    assert any(re.search(pattern, line) for line in tail), tail
    assert written == []


@pytest.mark.slow
def test_cli_default_verbosity_exits_0_but_ends_with_the_error(demo_dir, tmp_path):
    """lmms-eval 0.7.3 swallows the exception without --verbosity DEBUG (README: how to get a non-zero exit)."""
    proc, tail, written = run_cli(demo_dir, tmp_path, demo_dir / "tiny" / "model.pth", "--batch_size", "-3",
                                  debug=False)  # fmt: skip
    assert proc.returncode == 0
    assert any("Error during evaluation: batch_size='-3': expected a whole number >= 1" in line for line in tail), tail
    assert written == []
