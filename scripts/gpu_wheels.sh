#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before a GPU call: downloads the wheels of scripts/gpu_wheels.txt into .whl/
# (git-ignored), which the GPU call then carries (run's carry: [".whl"]) and scripts/gpu_env.sh installs there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -v '^\s*#' scripts/gpu_wheels.txt | grep -v '^\s*$' |
    xargs "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl
ls -l .whl
