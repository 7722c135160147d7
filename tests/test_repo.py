"""Repository hygiene: CI runs the README's test command; the code is formatted and lint-clean."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_two_commands():
    assert len(readme_commands()) == 2
    assert "visualrwkv-eval demo" in readme_commands()[0]


def test_ci_runs_the_readme_test_command():
    assert readme_commands()[-1] in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args):
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_passing_test_leaves_no_files_behind(tmp_path):
    # Real-shape checkpoints take up to 3 GB per test, and pytest keeps three runs' files by default: on a
    # small /tmp that ended a CI run with ENOSPC. setup.cfg's retention policy must remove a passed test's files.
    (tmp_path / "test_writes.py").write_text(
        "def test_writes(tmp_path):\n    (tmp_path / 'big.bin').write_bytes(bytes(1 << 20))\n"
    )
    root = tmp_path / "temproot"
    root.mkdir()
    env = {**os.environ, "PYTEST_DEBUG_TEMPROOT": str(root)}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "setup.cfg")]
    run = subprocess.run(
        [*args, "--rootdir", str(tmp_path), str(tmp_path / "test_writes.py")], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert not [p for p in root.rglob("*") if p.is_file() and p.stat().st_size > 0]
