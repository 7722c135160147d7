#!/usr/bin/env bash
# GPU performance run (one H100, under 5 minutes): length (1B6 and 7B against their Transformer baselines, up
# to 24K tokens), eval (1B6 shape) and roofline (7B shape). JSON + PNG land in $OUT. Needs torch, CuPy,
# transformers and matplotlib on the machine (not lmms-eval or datasets).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
status=0
run() { echo "+ visualrwkv-eval bench $*"; python3 -m visualrwkv_eval.cli bench "$@" --out "$OUT" || status=1; }
run roofline --size 7b --prompt 640 --steps 32
run length --size 7b --steps 16
run length --size 1b6 --steps 16
run eval --size 1b6 --samples 64 --batch-sizes 16,64
exit $status
