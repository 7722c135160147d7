#!/usr/bin/env bash
# GPU performance run, the second device call after scripts/gpu_check.sh: `visualrwkv-eval bench` kernels, then
# roofline (7B shape), length (7B and 1B6 vs their Transformer baselines, up to 24K
# tokens) and eval (1B6 shape). Each step gets the time left before a hard deadline (default 300 s, set-up
# included) and writes its JSON as it goes; at the end the plots are packed into plots.tar so that $OUT holds at
# most 8 files (what a device call brings back).
#
#   run(command="bash scripts/gpu_bench.sh", carry=[".whl"], timeout_s=360)    # see DEVELOPERS.md
set -uo pipefail
DEADLINE=${GPU_BENCH_DEADLINE_S:-300}
start=$SECONDS
source "$(dirname "$0")/gpu_env.sh"
exec > >(tee "$OUT/gpu_bench.log") 2>&1
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo '{"complete": false, "reason": "no CUDA device: nothing to benchmark on this machine"}' >"$OUT/gpu_bench.json"
    echo "gpu_bench: no CUDA device"
    exit 2
fi
status=0
step() {  # step NEEDS_S COMMAND...: run with the time left, or record that it did not fit
    local needs=$1 left=$((DEADLINE - (SECONDS - start) - 10))
    shift
    if [ "$left" -lt "$needs" ]; then
        echo "gpu_bench: skipped ($left s left, needs $needs): $*"
        status=1
        return
    fi
    echo "+ $* (${left} s left)"
    timeout -k 5 "$left" "$@" || { echo "gpu_bench: exit $? from: $*"; status=1; }
}
bench() { step "$1" "$PYTHON" -m visualrwkv_eval.cli bench "${@:2}" --out "$OUT"; }
bench 40 kernels
bench 40 roofline --size 7b --prompt 640 --steps 32
bench 60 eval --size 1b6 --samples 64 --batch-sizes 16,64
bench 60 length --size 1b6 --steps 16
bench 60 length --size 7b --steps 16
(cd "$OUT" && compgen -G "*.png" >/dev/null && tar -cf plots.tar ./*.png && rm -f ./*.png)
ls -l "$OUT"
echo "gpu_bench exit $status"
exit $status
