# Sourced by the GPU scripts: install the project (the GPU machine has no network: --no-deps), make $OUT.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -c "import visualrwkv_eval.kernels" 2>/dev/null ||
    python3 -m pip install --no-deps --no-build-isolation -e . || exit 1
OUT="${OUT:-./bench_results}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
