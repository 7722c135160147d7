"""The one timer and peak-memory gauge (visualrwkv_eval.measure), and a command line that starts without torch."""

import subprocess
import sys
import time

import pytest
import torch

from visualrwkv_eval.measure import CLEAR_REFS, peak_memory_gib, peak_memory_reset, seconds, timed

CPU = torch.device("cpu")


def test_timer_reports_seconds_per_call():
    calls = []
    per_call = seconds(lambda: (calls.append(1), time.sleep(0.02)), CPU, reps=3, warmup=1, calls=2)
    assert len(calls) == 1 + 3 * 2
    assert 0.02 <= per_call < 0.5  # sleep never returns early; a loaded machine only adds
    took, value = timed(lambda: (time.sleep(0.02), "v")[1], CPU)
    assert value == "v" and took >= 0.02


@pytest.mark.skipif(not CLEAR_REFS.exists(), reason="no /proc/self/clear_refs (not Linux): the CPU peak cannot reset")
def test_cpu_peak_memory_is_the_peak_since_the_reset():
    peak_memory_reset(CPU)
    before = peak_memory_gib(CPU)
    block = torch.ones(64, 2**20, dtype=torch.float32)  # 256 MiB, every page touched
    during = peak_memory_gib(CPU)
    del block
    peak_memory_reset(CPU)
    after = peak_memory_gib(CPU)
    assert during - before > 0.2 and during - after > 0.2


def test_help_imports_neither_torch_nor_transformers():
    """`visualrwkv-eval --help` and a subcommand's help build the parser without the model stack (seconds)."""
    code = (
        "import sys\n"
        "from visualrwkv_eval import cli\n"
        "for argv in (['--help'], ['make-tiny', '--help'], ['demo', '--help']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lmms_eval') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "make-tiny" in done.stdout and done.stdout.strip().endswith("[]")


def test_size_names_are_the_models_sizes():
    from visualrwkv_eval.bench import SIZE_NAMES
    from visualrwkv_eval.model.tiny import SIZES

    assert SIZE_NAMES == tuple(SIZES)


def test_kernel_benchmark_needs_no_evaluation_stack():
    """`bench kernels` runs on a bare GPU machine: its options and module import neither transformers nor lmms-eval."""
    code = (
        "import sys\n"
        "from visualrwkv_eval import cli\n"
        "args = cli.build_parser(('kernels',)).parse_args(['bench', 'kernels', '--out', 'x'])\n"
        "print(args.what, sorted(m for m in ('transformers', 'lmms_eval') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "kernels []"
