#!/usr/bin/env bash
# The one GPU check of the WKV6 kernels: a single device call of at most 8 minutes, everything written to $OUT
# as it is measured ($OUT/gpu_check.json, pip_list.txt, pytest_gpu.log, sanitizer.log, gpu_check.log).
# Sections (scripts/gpu_check.py): environment and versions, load-time probe, kernel attributes (registers,
# local and shared memory per entry point), side-stream launch with the default stream busy, decode under
# CUDA-graph capture vs eager (kernel and tiny model), host microseconds per decode launch, the GPU tests,
# offsets past 2^31, a 24K-token sequence vs the reference, the tiny model with kernel=cupy vs torch (fp32,
# bf16), compute-sanitizer memcheck/racecheck/synccheck. Without a GPU it stops early, saying why (exit 2).
#
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)    # see DEVELOPERS.md
set -uo pipefail
DEADLINE=${GPU_CHECK_DEADLINE_S:-470}  # hard limit for the whole script, set-up included
start=$SECONDS
source "$(dirname "$0")/gpu_env.sh"
budget=$((DEADLINE - (SECONDS - start) - 15))
echo "gpu_check: ${budget} s for the checks"
timeout -k 5 $((budget + 10)) "$PYTHON" -u scripts/gpu_check.py --out "$OUT" --budget-s "$budget" 2>&1 |
    tee "$OUT/gpu_check.log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "gpu_check: stopped at the deadline; $OUT/gpu_check.json holds the sections that finished"
fi
echo "gpu_check exit $status"
exit "$status"
