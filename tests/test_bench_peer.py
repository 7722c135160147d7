"""`visualrwkv-eval bench peer` with the tiny shape: both engines on one checkpoint, JSON + plot; without the
official package it still runs, and says why the official engine is missing."""

import json
import sys

import pytest

from visualrwkv_eval.cli import main

ARGS = ["bench", "peer", "--size", "tiny", "--prompt", "16", "--steps", "2", "--reps", "1"]


@pytest.mark.slow  # the official package compiles its TorchScript
def test_peer_compares_both_engines_on_one_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_JIT_ON", "0")  # as tests/test_rwkv_official.py imports the package
    main([*ARGS, "--out", str(tmp_path)])
    r = json.loads((tmp_path / "peer_tiny.json").read_text())
    assert r["benchmark"] == "peer" and r["prompt_tokens"] == 16 and r["threads"] >= 1
    assert set(r["engines"]) == {"ours", "official"}
    for engine in r["engines"].values():
        assert engine["prefill_tokens_per_s"] > 0 and engine["decode_ms_per_token"] > 0
    assert r["ratios"]["prefill_ours_over_official"] > 0
    assert r["logits"]["prefill_max_abs_diff"] < 1e-3 and r["logits"]["decode_max_abs_diff"] < 1e-3
    assert (tmp_path / "peer_tiny.png").stat().st_size > 1000


def test_peer_without_the_official_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rwkv.model", None)  # import fails as if the package were missing
    main([*ARGS, "--out", str(tmp_path)])
    r = json.loads((tmp_path / "peer_tiny.json").read_text())
    assert set(r["engines"]) == {"ours"} and "ratios" not in r
    assert "skipped" in r["official_package"] and "skipped" in capsys.readouterr().out
