#!/usr/bin/env bash
# One GPU call: GPU test files ($TESTS_FILES), then kernel benchmark cases ($CASES, tag $TAG, extra arguments
# $BENCH_ARGS, e.g. --text-sweep). Results under $OUT.
# Example runs (bench/NOTES.md v7), with carry [".wheels"]
# for the patch-layer tests:
#   CASES=hunyuan-gna,hunyuan-gna-text,hunyuan-na,flux4k-gna,flux4k-na TAG=s2c \
#     TESTS_FILES="tests/test_triton_gpu.py tests/test_patch_gpu.py" bash bench/final_cycle.sh
#   CASES=hunyuan-gna,hunyuan-gna-text,hunyuan720-gna,wan720,dense-equal TAG=s2d \
#     TESTS_FILES=tests/test_gluon_gpu.py bash bench/final_cycle.sh
set -o pipefail
cd "$(dirname "$0")/.."
export TRITON_PRINT_AUTOTUNING=1
source bench/gpu_env.sh
gpu_snapshot "$OUT/nvidia-smi.txt"
if [ -n "${TESTS_FILES:-}" ]; then
  timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -m gpu $TESTS_FILES -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -30
fi
if [ -n "${CASES:-}" ]; then
  timeout "${BENCH_TIMEOUT:-300}" python3 bench/kernels.py --out "$OUT" --cases "$CASES" --tag "$TAG" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
fi
