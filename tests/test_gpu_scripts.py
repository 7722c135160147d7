"""The GPU check's driver without a GPU: it stops after recording the environment, with a JSON that says why, and
its report keeps every finished section when later ones fail or do not fit in the time left."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_driver():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: scripts/gpu_check.sh runs for real")
def test_without_a_gpu_the_check_says_why(tmp_path):
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path), "--budget-s", "60"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["reason"].startswith("no CUDA device") and report["complete"] is False
    assert report["sections"]["environment"]["cuda_available"] is False


def test_report_keeps_finished_sections(tmp_path):
    driver = load_driver()
    report = driver.Report(tmp_path, budget_s=100)
    report.run("fine", lambda: {"figure": 1.5}, needs_s=1)
    report.run("wrong", lambda: {"problems": ["y differs"]}, needs_s=1)
    report.run("broken", lambda: 1 / 0, needs_s=1)
    report.run("too_long", lambda: {}, needs_s=1000)
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert {name: s["status"] for name, s in sections.items()} == {
        "fine": "ok", "wrong": "failed", "broken": "error", "too_long": "skipped"}  # fmt: skip
    assert sections["fine"]["figure"] == 1.5 and "ZeroDivisionError" in sections["broken"]["error"]
