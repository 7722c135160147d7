"""The resume journal, the checkpoint fingerprint and the image prefetcher, in-process (fast)."""

import os
import threading
import time

import pytest
import torch

from visualrwkv_eval.journal import Entry, Journal, file_fingerprint, request_key
from visualrwkv_eval.pipeline import Prefetcher


def test_journal_serves_what_another_process_wrote(tmp_path):
    first = Journal(tmp_path, rank=0)
    first.append([("k1", Entry("Yes", 40, 2), "pope/1"), ("k2", Entry("a\nb \u00e9", 41, 3), "pope/2")])
    first.close()
    found = Journal(tmp_path, rank=1).load({"k1", "k2", "k3"})
    assert found == {"k1": Entry("Yes", 40, 2), "k2": Entry("a\nb \u00e9", 41, 3)}
    assert Journal(tmp_path, rank=0).load({"k2"}) == {"k2": Entry("a\nb \u00e9", 41, 3)}  # only what is wanted


def test_torn_and_corrupt_lines_are_never_trusted(tmp_path):
    j = Journal(tmp_path, rank=0)
    j.append([("good", Entry("No", 40, 1), "pope/1"), ("torn", Entry("Yes", 40, 1), "pope/2")])
    j.close()
    text = j.path.read_text()
    lines = text.splitlines(keepends=True)
    # a kill in the middle of the last write: the line has no newline (and may even parse)
    j.path.write_text(lines[0] + lines[1][:-1])
    assert Journal(tmp_path).load({"good", "torn"}) == {"good": Entry("No", 40, 1)}
    # a flipped byte in an answer: the CRC no longer matches
    j.path.write_text(lines[0].replace('"No"', '"Na"') + lines[1])
    assert Journal(tmp_path).load({"good", "torn"}) == {"torn": Entry("Yes", 40, 1)}
    (tmp_path / "junk.jsonl").write_text("not json\n{}\n")
    assert Journal(tmp_path).load({"good", "torn"}) == {"torn": Entry("Yes", 40, 1)}


def test_request_key_covers_every_field():
    base = {"task": "pope", "split": "test", "doc_id": 3, "context": "Is it?", "gen_kwargs": {"until": ["\n\n"]}}
    keys = {request_key("model-a", base), request_key("model-b", base)}
    for field, value in (("task", "mme"), ("split", "val"), ("doc_id", 4), ("context", "Is it? "),
                         ("gen_kwargs", {"until": ["\n"]})):  # fmt: skip
        keys.add(request_key("model-a", {**base, field: value}))
    assert len(keys) == 7
    assert request_key("model-a", dict(reversed(base.items()))) == request_key("model-a", base)


def test_fingerprint_follows_content_not_path(tmp_path, monkeypatch):
    import visualrwkv_eval.journal as journal

    ckpt, memo = tmp_path / "model.pth", tmp_path / "fingerprints.json"
    ckpt.write_bytes(b"\x00" * 4096 + b"A")
    assert file_fingerprint(ckpt, memo) and not memo.is_file()  # just written: too fresh to remember
    monkeypatch.setattr(journal, "RACY_SECONDS", 0.0)
    first = file_fingerprint(ckpt, memo)
    assert file_fingerprint(ckpt, memo) == first and memo.is_file()  # remembered
    time.sleep(0.05)  # past the file system's time granularity
    ckpt.write_bytes(b"\x00" * 4096 + b"B")  # same path, same size, same inode: another model
    assert file_fingerprint(ckpt, memo) != first
    replacement = tmp_path / "other.pth"
    replacement.write_bytes(b"\x00" * 4096 + b"A")
    os.replace(replacement, ckpt)  # a different file moved in with the first content: same answers are fine
    assert file_fingerprint(ckpt, memo) == first


def test_fingerprint_memo_in_a_folder_not_made_yet(tmp_path, monkeypatch):
    """The adapter makes the model key before the journal's folder exists (a fresh --output_path and a checkpoint
    older than RACY_SECONDS): remembering the fingerprint must not fail there."""
    import visualrwkv_eval.journal as journal

    ckpt, memo = tmp_path / "model.pth", tmp_path / "out" / "visualrwkv_journal" / "fingerprints.json"
    ckpt.write_bytes(b"\x00" * 4096)
    monkeypatch.setattr(journal, "RACY_SECONDS", 0.0)
    assert file_fingerprint(ckpt, memo) == file_fingerprint(ckpt, None) and memo.is_file()


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_prefetcher_keeps_order_and_bounds_the_queue(workers):
    prepared, lock = [], threading.Lock()

    def prepare(i):
        time.sleep(0.001 * (i % 3))  # workers finish out of order
        with lock:
            prepared.append(i)
        return i * i

    batches = [list(range(b * 4, b * 4 + 4)) for b in range(10)]
    seen = []
    for batch, out in Prefetcher(prepare, workers, depth=2).run(batches):
        assert out == [i * i for i in batch]
        time.sleep(0.01)  # the "model": the prefetcher may only run `depth` batches ahead meanwhile
        with lock:
            ahead = max(prepared) // 4 - batch[0] // 4
        assert ahead <= (2 if workers else 0), (batch, ahead)
        seen.append(batch)
    assert seen == batches


def test_prefetcher_stops_its_workers_when_the_consumer_fails():
    started = []

    def prepare(i):
        started.append(i)
        return i

    with pytest.raises(RuntimeError):
        for _batch, _ in Prefetcher(prepare, 2, depth=1).run([[i] for i in range(100)]):
            raise RuntimeError("model failed")
    assert len(started) <= 3


def test_preprocessed_pixels_give_the_same_answers(tiny_model):
    from PIL import Image

    from visualrwkv_eval.model import GenerationRequest, generate_batch

    images = [Image.new("RGB", (64 + 9 * i, 48), (40 * i, 90, 200 - 30 * i)) for i in range(3)]
    question = "What is shown?\nAnswer the question using a single word or phrase."
    plain = generate_batch(tiny_model, [GenerationRequest(question, im, max_new_tokens=6) for im in images])
    pixels = [GenerationRequest(question, None, 6, pixels=tiny_model.preprocess([im])) for im in images]
    ahead = generate_batch(tiny_model, pixels)
    assert [(g.text, g.new_tokens, g.prompt_tokens) for g in plain] == [
        (g.text, g.new_tokens, g.prompt_tokens) for g in ahead
    ]
    assert all(isinstance(r.pixels, torch.Tensor) for r in pixels)
