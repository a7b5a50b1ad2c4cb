#!/usr/bin/env bash
# One GPU call: GPU tests, then the kernel benchmark. Logs and results go under $OUT.
# Env: TESTS=0 skips the tests, TEST_K selects some (pytest -k); BENCH_ARGS passes flags to bench/kernels.py;
# BENCH=0 skips the benchmark; SAVE_CACHE=1 returns the Triton cache as $OUT/cache.tgz (carry it back as bench/.cache).
# A Triton/inductor cache (bench/.cache/cache.tgz, git-excluded, carried) saves compile time between calls.
set -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=. TRITON_CACHE_AUTOTUNING=1 TRITON_PRINT_AUTOTUNING=1
export TRITON_CACHE_DIR=/tmp/na_cache/triton TORCHINDUCTOR_CACHE_DIR=/tmp/na_cache/inductor
OUT=${OUT:-/tmp/na_out}
mkdir -p "$OUT" /tmp/na_cache
if [ -f bench/.cache/cache.tgz ]; then tar xzf bench/.cache/cache.tgz -C /tmp/na_cache && echo "cache restored"; fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used --format=csv \
  | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if [ "${TESTS:-1}" = 1 ]; then
  timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -m gpu tests/test_triton_gpu.py -x -q -p no:cacheprovider \
    ${TEST_K:+-k "$TEST_K"} 2>&1 | tee "$OUT/gpu_tests.log"
fi
if [ "${BENCH:-1}" = 1 ]; then
  timeout "${BENCH_TIMEOUT:-300}" python3 bench/kernels.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
fi
if [ "${SAVE_CACHE:-0}" = 1 ]; then tar czf "$OUT/cache.tgz" -C /tmp/na_cache triton 2>/dev/null; fi
ls -la "$OUT"
