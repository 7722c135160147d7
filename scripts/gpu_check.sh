#!/usr/bin/env bash
# GPU check of the CuPy WKV6 kernels: the GPU tests, then the kernel benchmark ($OUT/kernels.json).
# Needs torch, CuPy and pytest; not lmms-eval, datasets or transformers. Under 5 minutes on one H100.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"

# Both steps run even if the first fails: one GPU session should bring back all the evidence.
python3 -m pytest -q -m gpu tests/test_kernels.py 2>&1 | tee "$OUT/test_kernels.log"
tests=${PIPESTATUS[0]}
python3 benchmarks/gpu_kernels.py --out "$OUT/kernels.json" 2>&1 | tee "$OUT/gpu_kernels.log"
bench=${PIPESTATUS[0]}
echo "gpu tests exit $tests, benchmark exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
