#!/usr/bin/env bash
# GPU performance run, the second device call after scripts/gpu_check.sh: `visualrwkv-eval bench` kernels,
# VisualRWKV-7's eval (0B1 shape), vision tower (scripts/gpu_vision7.py) and language model (gpu_check's
# rwkv7_model), then roofline (7B shape), eval (1B6
# shape) and length (1B6 and 7B vs their Transformer baselines, up to 24K tokens). Each step gets the time left
# before a hard deadline (default 470 s, set-up included) and writes its JSON as it goes; at the end every result
# is packed into bench.tar, so that $OUT holds 3 files (a device call brings back at most 8).
#
#   run(command="bash scripts/gpu_bench.sh", carry=[".whl"], timeout_s=540)    # see DEVELOPERS.md
set -uo pipefail
DEADLINE=${GPU_BENCH_DEADLINE_S:-470}
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
bench 90 eval --size 0b1 --samples 64 --batch-sizes 16,64
step 40 "$PYTHON" scripts/gpu_vision7.py --out "$OUT/vision7_tower.json"
step 30 "$PYTHON" -c "import json, sys; sys.path.insert(0, 'scripts'); import gpu_check
open('$OUT/rwkv7_model.json', 'w').write(json.dumps(gpu_check.rwkv7_model(), indent=1))"
bench 40 roofline --size 7b --prompt 640 --steps 32
bench 60 eval --size 1b6 --samples 64 --batch-sizes 16,64
bench 60 length --size 1b6 --steps 16
bench 60 length --size 7b --steps 16
# a device call brings back at most 8 files: every result but the log and the package list goes into one tar
(cd "$OUT" && files=$(ls | grep -v -x -e gpu_bench.log -e pip_list.txt) && [ -n "$files" ] &&
    tar -cf bench.tar $files && rm -f $files)
ls -l "$OUT"
echo "gpu_bench exit $status"
exit $status
