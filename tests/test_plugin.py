"""The lmms-eval adapter: registration, model_args, request plumbing, bad input, multi-round, OOM splits."""

import pytest
import torch
from lmms_eval.api.instance import Instance
from loguru import logger
from PIL import Image

from visualrwkv_eval import lmms_model as adapter
from visualrwkv_eval.model import CheckpointError, GenerationRequest, generate_batch, world_tokenizer
from visualrwkv_eval.model.tokenizer import STOP_TOKEN

QUESTION = "What color is the square?\nAnswer the question using a single word or phrase."


def test_entry_point_resolves():
    from lmms_eval.models import get_model, list_available_models

    assert "visualrwkv" in list_available_models()
    assert get_model("visualrwkv") is adapter.VisualRWKVLmms


def test_unknown_model_arg_lists_the_valid_ones(demo_dir):
    with pytest.raises(ValueError, match=r"unknown model_args \['temprature'\]; valid model_args: pretrained, "):
        adapter.VisualRWKVLmms(pretrained=str(demo_dir / "tiny" / "model.pth"), temprature=0)


def test_batch_size_auto_and_cap(demo_dir):
    args = dict(pretrained=str(demo_dir / "tiny" / "model.pth"), vision_tower=str(demo_dir / "tiny" / "vision_tower"))
    auto = adapter.VisualRWKVLmms(**args, batch_size="auto")
    assert 1 <= auto.batch_size <= adapter.AUTO_BATCH_CAP
    assert adapter.VisualRWKVLmms(**args, batch_size="auto", max_batch_size=3).batch_size == min(3, auto.batch_size)
    assert adapter.VisualRWKVLmms(**args, batch_size="500").batch_size == 500
    assert adapter.VisualRWKVLmms(**args, batch_size=500, max_batch_size=7).batch_size == 7


def test_missing_checkpoint_fails_before_any_data_set_loads(tmp_path):
    from lmms_eval.evaluator import simple_evaluate

    task = {
        "task": "mme",
        "dataset_path": "parquet",
        "dataset_kwargs": {"data_files": {"test": "/nonexistent.parquet"}},
    }
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*missing\.pth"):
        simple_evaluate(model="visualrwkv", model_args=f"pretrained={tmp_path / 'missing.pth'}", tasks=[task])


def test_missing_vision_tower_names_its_path(demo_dir, tmp_path):
    with pytest.raises(ValueError, match=f"vision tower {tmp_path / 'nope'}: missing config.json"):
        adapter.VisualRWKVLmms(pretrained=str(demo_dir / "tiny" / "model.pth"), vision_tower=str(tmp_path / "nope"))


def colour_image(seed: int) -> Image.Image:
    return Image.new("RGB", (40 + seed, 50), (seed * 20 % 255, 80, 160))


class FakeTask:
    """Requests as lmms-eval builds them, over docs held in `task_dict`."""

    def __init__(self, model, docs, task="fake", split="test"):
        model.task_dict = {task: {split: docs}}
        self.task, self.split = task, split

    def generate(self, doc_id, context=QUESTION, **gen_kwargs):
        args = (context, gen_kwargs, lambda doc: doc["visuals"](), doc_id, self.task, self.split)
        return Instance("generate_until", args, doc_id, {"task": self.task, "doc_id": doc_id, "repeats": 1})


def broken_image():
    raise OSError("cannot identify image file")


def test_bad_images_cost_only_their_own_sample(lmms_model):
    docs = [
        {"visuals": lambda: [colour_image(1)]},
        {"visuals": broken_image},  # fails to decode
        {"visuals": lambda: [Image.new("RGB", (0, 0))]},  # decodes, cannot be processed
        {"visuals": lambda: [colour_image(2), colour_image(3)]},  # several images: the first is used
        {"visuals": lambda: []},  # no image
    ]
    task = FakeTask(lmms_model, docs)
    messages = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        out = lmms_model.generate_until([task.generate(i, max_new_tokens=8) for i in range(5)])
    finally:
        logger.remove(sink)
    assert out[1].text == "" and out[2].text == ""
    assert any("fake doc 1: image could not be used (OSError: cannot identify image file)" in m for m in messages)
    assert any("fake doc 2: image could not be used" in m for m in messages)
    assert sum("takes one and uses the first" in m for m in messages) == 1
    model = lmms_model.model
    expected = [generate_batch(model, [GenerationRequest(QUESTION, im, 8)])[0].text
                for im in (colour_image(1), colour_image(2), None)]  # fmt: skip
    assert [out[0].text, out[3].text, out[4].text] == expected
    assert out[0].token_counts.input_tokens > 17 and out[0].token_counts.output_tokens >= 1


def test_gen_kwargs_are_honoured(lmms_model):
    make = lambda kw: lmms_model._generation_request(QUESTION, kw, None, "t", "s", 0)  # noqa: E731
    assert make({}).max_new_tokens == 128  # TextVQA sends none: the model_arg's default
    assert make({"until": "ASSISTANT:"}).until == ("ASSISTANT:",)
    assert make({"until": ["\n\n", "X"]}).until == ("\n\n", "X")
    assert make({"temperature": 0, "do_sample": False, "top_p": 0}).temperature == 0.0
    assert make({"temperature": 0.7}).temperature == 0.0  # HF semantics: no sampling without do_sample
    assert make({"do_sample": True}).temperature == 1.0
    assert make({"do_sample": True, "temperature": 0}).temperature == 0.0
    task = FakeTask(lmms_model, [{"visuals": lambda: [colour_image(4)]}])
    full = lmms_model.generate_until([task.generate(0, max_new_tokens=40)])[0]
    (one,) = lmms_model.generate_until([task.generate(0, max_new_tokens=1)])
    assert one.token_counts.output_tokens == 1 and full.text.startswith(one.text)
    a, b = (lmms_model.generate_until([task.generate(0, do_sample=True, temperature=1.0, max_new_tokens=12)])[0]
            for _ in range(2))  # fmt: skip
    assert a.text == b.text  # sampling is seeded per document, whatever the batch


@pytest.mark.slow
def test_out_of_memory_splits_the_batch(lmms_model, monkeypatch):
    real, calls = adapter.generate_batch, []

    def flaky(model, reqs, **kw):
        calls.append(len(reqs))
        if len(reqs) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, reqs, **kw)

    task = FakeTask(lmms_model, [{"visuals": (lambda i=i: [colour_image(i)])} for i in range(4)])
    expected = lmms_model.generate_until([task.generate(i, max_new_tokens=6) for i in range(4)])
    monkeypatch.setattr(adapter, "generate_batch", flaky)
    got = lmms_model.generate_until([task.generate(i, max_new_tokens=6) for i in range(4)])
    assert [g.text for g in got] == [e.text for e in expected]
    assert calls[0] == 4 and calls.count(1) == 4


def test_multi_round_reuses_the_state(lmms_model):
    """Round 2 from the carried state equals a fresh run over the whole conversation."""
    tok = world_tokenizer()
    model = lmms_model.model
    image = colour_image(5)

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        if round_idx < 2:
            return None, "And the background?", False, previous_output, None
        return None, None, True, previous_output, None

    lmms_model.task_dict = {"mr": {"test": [{"visuals": lambda: [image]}]}}
    args = (QUESTION, {"max_new_tokens": 10}, lambda d: d["visuals"](), doc_to_text, 0, "mr", "test")
    (rounds,) = lmms_model.generate_until_multi_round(
        [Instance("generate_until_multi_round", args, 0, {"task": "mr", "doc_id": 0, "repeats": 1})]
    )
    assert len(rounds) == 2
    first = generate_batch(model, [GenerationRequest(QUESTION, image, 10)])[0]
    assert rounds[0] == first.text
    # the same conversation read from scratch: prompt, answer, "\n\n", next user turn, "Assistant:"
    closing = first.new_tokens + [STOP_TOKEN] if len(first.new_tokens) == 10 else first.new_tokens
    closing = closing + ([STOP_TOKEN] if closing[-1:] != [STOP_TOKEN] else [])
    ids = model.prompt(QUESTION, True)
    feats = model.encode_images([image])[0]
    rows, first_patch = model.embed(ids, feats)
    more = closing + tok.encode("User: And the background?\n\n") + tok.encode("Assistant:")
    rows = torch.cat([rows, model.rwkv.emb(torch.tensor(more))])
    (logits,), state = model.prefill([(rows, first_patch)])
    answer = []
    for _ in range(10):
        token = int(logits.argmax())
        if token == STOP_TOKEN:
            break
        answer.append(token)
        logits = model.decode(torch.tensor([token]), state)[0]
    assert rounds[1] == tok.decode(answer).split("\n\n")[0].strip()


def test_loglikelihood_requests(lmms_model):
    lmms_model.task_dict = {"ll": {"test": [{"visuals": lambda: [colour_image(6)], "answer": " red"}]}}
    req = Instance("loglikelihood", (QUESTION, lambda d: d["answer"], lambda d: d["visuals"](), 0, "ll", "test"), 0,
                   {"task": "ll", "doc_id": 0, "repeats": 1})  # fmt: skip
    req2 = Instance("loglikelihood", (QUESTION, " blue", lambda d: d["visuals"](), 0, "ll", "test"), 1,
                    {"task": "ll", "doc_id": 0, "repeats": 1})  # fmt: skip
    (lp_red, _), (lp_blue, _) = lmms_model.loglikelihood([req, req2])
    assert lp_red < 0 and lp_blue < 0 and lp_red != lp_blue


def test_clean_keeps_the_weights(lmms_model):
    lmms_model.clean()
    assert isinstance(lmms_model.model.rwkv.head.weight, torch.Tensor)


def test_multi_round_conversations_may_end_at_different_rounds(lmms_model):
    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        if round_idx < doc["rounds"]:
            return None, f"And round {round_idx}?", False, previous_output, None
        return None, None, True, previous_output, None

    docs = [{"visuals": lambda: [colour_image(7)], "rounds": n} for n in (1, 3, 2)]
    lmms_model.task_dict = {"mr": {"test": docs}}

    def request(i):
        args = (QUESTION, {"max_new_tokens": 6}, lambda d: d["visuals"](), doc_to_text, i, "mr", "test")
        return Instance("generate_until_multi_round", args, i, {"task": "mr", "doc_id": i, "repeats": 1})

    together = lmms_model.generate_until_multi_round([request(i) for i in range(3)])
    assert [len(r) for r in together] == [1, 3, 2]
    assert together == [lmms_model.generate_until_multi_round([request(i)])[0] for i in range(3)]
