#!/usr/bin/env bash
# One GPU call for the 8-bit kernel: its GPU tests (layout bytes, accuracy gates, fallbacks, trained-model layers),
# then bench/kernels.py with --fp8 (bf16 vs fp8 vs cuDNN, SageAttention on the dense case). Each step has its own
# time limit so that a hang in one leaves the others' results under $OUT.
#   CASES=hunyuan-gna,dense-equal TESTS_S=200 BENCH_S=300 [FP8_VARIANTS=1] [TESTS="test files"] bash bench/fp8_cycle.sh
set -u
source bench/gpu_env.sh
gpu_snapshot "$OUT/gpu.csv"
CASES=${CASES:-hunyuan-gna,hunyuan-na,flux4k-gna,wan720,dense-equal}
timeout "${TESTS_S:-200}" python3 -m pytest -q -m gpu ${TESTS:-tests/test_gluon_fp8_gpu.py} -v -rA -s -p no:cacheprovider ${PYTEST_ARGS:-} \
  > "$OUT/fp8-tests.log" 2>&1
echo "tests rc=$?" | tee -a "$OUT/fp8-tests.log"
tail -5 "$OUT/fp8-tests.log"
timeout "${BENCH_S:-300}" python3 bench/kernels.py --cases "$CASES" --fp8 ${FP8_VARIANTS:+--fp8-variants} \
  --no-flex --no-triton-alone --quick \
  --out "$OUT" --tag "${TAG:-fp8}" > "$OUT/fp8-bench.log" 2>&1
echo "bench rc=$?" | tee -a "$OUT/fp8-bench.log"
grep -v "^Triton autotuning" "$OUT/fp8-bench.log" | tail -40
