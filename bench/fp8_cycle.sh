#!/usr/bin/env bash
# One GPU call for the 8-bit kernel: optionally Nsight Compute on the kernel and its layout step (NCU=1: the second
# launch of each on the hunyuan-gna problem, or on the dense one with DENSE=1), its GPU tests (layout bytes,
# accuracy gates, fallbacks, trained-model layers), then bench/kernels.py with --fp8 (bf16 vs fp8 vs cuDNN, the
# layout step and the passes before it, SageAttention on the dense case). Each step has its own time limit so that
# a hang in one leaves the others' results under $OUT.
#   CASES=hunyuan-gna,dense-equal TESTS_S=200 BENCH_S=300 [FP8_VARIANTS=1] [LAYOUT_WARPS=8,16,32] \
#     [NCU=1 [DENSE=1] NCU_S=90] [TESTS="test files"] [TESTS_K="pytest -k expression"] bash bench/fp8_cycle.sh
set -u
source bench/gpu_env.sh
gpu_snapshot "$OUT/gpu.csv"
CASES=${CASES:-hunyuan-gna,hunyuan-na,flux4k-gna,wan720,dense-equal}
if [ -n "${NCU:-}" ]; then
  mode=${DENSE:+dense}
  timeout "${NCU_S:-90}" ncu --clock-control none -k 'regex:_gna_fp8_kernel|_fp8_layout_kernel' --launch-skip 2 \
    --launch-count 2 --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
    --section MemoryWorkloadAnalysis --section Occupancy python3 bench/profile_kernel.py fp8 $mode \
    > "$OUT/ncu-fp8-${mode:-sparse}.txt" 2>&1
  echo "ncu rc=$?"
  grep -E "^\s+_|Duration|Throughput|Stall|No Eligible|Active Warps" "$OUT/ncu-fp8-${mode:-sparse}.txt" | head -40
fi
timeout "${TESTS_S:-200}" python3 -m pytest -q -m gpu ${TESTS:-tests/test_gluon_fp8_gpu.py} ${TESTS_K:+-k "$TESTS_K"} \
  -rA -p no:cacheprovider --timeout=150 ${PYTEST_ARGS:-} > "$OUT/fp8-tests.log" 2>&1
echo "tests rc=$?" | tee -a "$OUT/fp8-tests.log"
tail -5 "$OUT/fp8-tests.log"
timeout "${BENCH_S:-300}" python3 bench/kernels.py --cases "$CASES" --fp8 ${FP8_VARIANTS:+--fp8-variants} \
  ${LAYOUT_WARPS:+--fp8-layout-warps "$LAYOUT_WARPS"} --no-flex --no-triton-alone --quick \
  --out "$OUT" --tag "${TAG:-fp8}" > "$OUT/fp8-bench.log" 2>&1
echo "bench rc=$?" | tee -a "$OUT/fp8-bench.log"
grep -v "^Triton autotuning" "$OUT/fp8-bench.log" | tail -40
