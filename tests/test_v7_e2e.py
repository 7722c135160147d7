"""VisualRWKV-7 end to end: the mini benchmarks through the real lmms-eval CLI with a tiny random v7 checkpoint
(`visualrwkv-eval demo --family v7`, then lmms-eval's CLI at batch 1), answers checked against the naive float64 VisualRWKV-7 of tests/naive_visualrwkv7.py
(the reference's protocol: the whole sequence re-run after its left pads for every token), and a request with two
images through the adapter (no mini task sends more than one).

lmms-eval's CLI exits 0 when the evaluation fails unless --verbosity DEBUG: the batch-1 run passes it, the demo
checks the results file itself, and the tests assert on the files each run wrote."""

import json
import subprocess
import sys

import naive_visualrwkv7 as naive
import pytest
import torch
import yaml
from PIL import Image

from visualrwkv_eval.cli import lmms_eval_command, offline_env, results_file
from visualrwkv_eval.model import load_model
from visualrwkv_eval.model.prompt import ImageSlot
from visualrwkv_eval.model.tiny import make_tiny

pytestmark = pytest.mark.slow  # lmms-eval's CLI twice over eleven tasks (the demo, then batch 1)


def read_run(out):
    path = results_file(out)
    samples = {}
    for f in path.parent.glob(f"{path.name.split('_results')[0]}_samples_*.jsonl"):
        samples[f.stem.split("_samples_")[1]] = [json.loads(line) for line in f.read_text().splitlines()]
    return json.loads(path.read_text()), samples


def run_cli(demo_dir, checkpoint, out, batch_size: int):
    # no vision_tower: a VisualRWKV-7 file holds its towers
    cmd = lmms_eval_command(checkpoint, None, "visualrwkv_mini", out, "--batch_size", str(batch_size),
                            "--log_samples", "--verbosity", "DEBUG", include_path=demo_dir / "tasks",
                            model_args=",dtype=float32")  # fmt: skip
    proc = subprocess.run(cmd, env=offline_env(demo_dir), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return read_run(out)


@pytest.fixture(scope="module")
def demo7(tmp_path_factory):
    """`visualrwkv-eval demo OUT --family v7` (batch 8; it exits non-zero when a task has no results)."""
    out = tmp_path_factory.mktemp("demo7")
    cmd = [sys.executable, "-m", "visualrwkv_eval.cli", "demo", str(out), "--family", "v7"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def tiny7(demo7):
    return demo7 / "tiny_v7" / "model.pth"


@pytest.fixture(scope="module")
def runs(demo7, tiny7, tmp_path_factory):
    """The visualrwkv_mini group: the demo's run (batch 8), then the same through lmms-eval's CLI at batch 1."""
    return [read_run(demo7 / "results_v7"), run_cli(demo7, tiny7, tmp_path_factory.mktemp("v7batch1"), 1)]


def mini_tasks(out) -> list[str]:
    return yaml.safe_load((out / "tasks" / "mini" / "_visualrwkv_mini.yaml").read_text())["task"]


def test_every_mini_task_produces_results(runs, demo7):
    results, samples = runs[0]
    assert "vision_tower" not in results["config"]["model_args"]
    tasks = mini_tasks(demo7)
    assert len(tasks) == 11
    for task in tasks:
        metrics = {k for k in results["results"][task] if k != "alias" and "stderr" not in k}
        assert metrics, (task, results["results"][task])
        n = results["n-samples"][task]["original"]
        assert n >= 20 and results["n-samples"][task]["effective"] == n
        assert len(samples[task]) == n
        # "User: " (3 tokens), the tiny towers' 16 image rows, the question, "\n\n", "Assistant:"
        assert all(s["token_counts"][0]["input_tokens"] > 3 + 16 for s in samples[task])


def test_batch_size_changes_no_answer(runs):
    (r8, s8), (r1, s1) = runs

    def answers(samples):
        return {t: sorted((s["doc_id"], s["filtered_resps"]) for s in rows) for t, rows in samples.items()}

    assert answers(s8) == answers(s1)
    assert r8["n-samples"] == r1["n-samples"]


def flat_ids(prompt, tokens_per_image: int) -> list[int]:
    """The prompt's ids with each image slot as the reference's run of 65535 placeholders."""
    out: list[int] = []
    for s in prompt.segments:
        out += [naive.IMAGE_ID] * tokens_per_image if isinstance(s, ImageSlot) else s
    return out


def naive_text(model, sd, question: str, images: list[Image.Image], max_new_tokens: int) -> str:
    """The naive float64 model's answer, cut as the reference cuts it (before the first "\\n\\n", stripped)."""
    ids = flat_ids(model.prompt(question, len(images)), model.vision.num_tokens)
    feats = [model.vision(model.preprocess([im]).float())[0] for im in images]  # the towers are tested elsewhere
    tokens = naive.greedy(sd, ids, feats, max_new_tokens)
    return model.tokenizer.decode(tokens).split("\n\n")[0].strip()


def test_cli_answers_equal_the_naive_reference(runs, demo7, tiny7):
    """GQA through lmms-eval (its prompt, max_new_tokens 16) gives the naive float64 model's greedy answers."""
    from datasets import Dataset

    _, samples = runs[0]
    docs = Dataset.from_parquet(str(demo7 / "data" / "gqa_testdev.parquet"))
    model = load_model(str(tiny7), dtype="float32", device="cpu")
    sd = torch.load(tiny7, weights_only=True)
    by_id = {s["doc_id"]: s for s in samples["visualrwkv_mini_gqa"]}
    for doc_id in (0, 1, 2, 5):
        image = docs[doc_id]["image"].convert("RGB")
        expected = naive_text(model, sd, by_id[doc_id]["input"], [image], max_new_tokens=16)
        assert by_id[doc_id]["filtered_resps"] == expected, doc_id


def test_two_images_through_the_adapter(tmp_path):
    """A request with two images (as a multi-image lmms-eval task sends it): VisualRWKV-7 reads both, image first,
    and answers as the naive reference does with both images (which differs from its answer with the first only)."""
    from lmms_eval.api.instance import Instance

    from visualrwkv_eval.lmms_model import VisualRWKVLmms

    path = make_tiny(tmp_path, seed=0, family="v7", stop_logit=0.0) / "model.pth"  # long answers
    lm = VisualRWKVLmms(pretrained=str(path), dtype="float32", batch_size=2)
    ims = [Image.new("RGB", (60, 40), (200, 30, 90)), Image.radial_gradient("L").convert("RGB").resize((50, 70))]
    lm.task_dict = {"two": {"test": [{"visuals": ims}, {"visuals": ims[:1]}]}}
    question = "Describe."

    def request(i):
        args = (question, {"max_new_tokens": 6}, lambda d: d["visuals"], i, "two", "test")
        return Instance("generate_until", args, i, {"task": "two", "doc_id": i, "repeats": 1})

    both, first = lm.generate_until([request(0), request(1)])
    sd = torch.load(path, weights_only=True)
    expected = naive_text(lm.model, sd, question, ims, 6)
    assert expected != naive_text(lm.model, sd, question, ims[:1], 6)  # the second image changes the answer
    assert (both.text, first.text) == (expected, naive_text(lm.model, sd, question, ims[:1], 6))
    # the second image adds its rows and the "\n" after its slot
    extra = len(flat_ids(lm.model.prompt(question, 2), 16)) - len(flat_ids(lm.model.prompt(question, 1), 16))
    assert both.token_counts.input_tokens - first.token_counts.input_tokens == extra == 16 + 1
