#!/usr/bin/env bash
# One GPU call for the end-to-end numbers of issue 6: real-size transformers (random weights, bf16), dense vs preset,
# per denoising step, plus the patch layer's own overhead (all-dense config). JSON records go to $OUT.
# Needs diffusers on the GPU image: carry .wheels (pip download --no-deps -d .wheels diffusers==0.42.1 ...).
# Env: CASES="hunyuan wan cosmos cosmos-sparse flux4k overhead overhead-flux" picks cases; STEPS (timed calls per variant, default 2).
# One call may run 10 minutes at most: hunyuan alone takes ~4 min (31 s dense steps), so split CASES over calls.
set -o pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
gpu_snapshot "$OUT/nvidia-smi.txt"
bench() { timeout "${CASE_TIMEOUT:-280}" python3 -m na_accel.cli bench --out "$OUT" --steps "${STEPS:-2}" "$@"; }
for case in ${CASES:-hunyuan wan cosmos flux4k overhead}; do
  echo "=== $case"
  case $case in
    hunyuan) bench --family hunyuan --config hunyuan_fast ;;
    wan) bench --family wan --config wan_fast ;;
    cosmos) bench --family cosmos --config cosmos_fast ;;
    flux4k) bench --family flux --config flux_fast --height 4096 --width 4096 ;;
    cosmos-sparse) bench --family cosmos --config bench/configs/cosmos_sparse.yaml ;;
    overhead) bench --family wan --config examples/configs/all_dense.yaml ;;
    overhead-flux) bench --family flux --config examples/configs/all_dense.yaml --steps 10 --warmup 2 ;;
    *) echo "unknown case $case" ;;
  esac
done 2>&1 | tee "$OUT/e2e.log"
