# Sourced by the GPU scripts. The GPU machine has no network: packages it lacks come as wheels carried in .whl/
# (scripts/gpu_wheels.sh), installed into /tmp/site; the project itself is installed without dependencies.
# Prints pip list first, so that every run records what it ran with. PYTHON overrides python3 (dry runs here).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-./bench_results}"
mkdir -p "$OUT"
"$PYTHON" -m pip list 2>/dev/null | tee "$OUT/pip_list.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: none"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import visualrwkv_eval.kernels" 2>/dev/null ||
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . ||
    echo "gpu_env: installing the project failed" >&2
"$PYTHON" -c "import rwkv" 2>/dev/null || echo "gpu_env: rwkv missing (no .whl/ carried?): model runs will fail" >&2
