#!/usr/bin/env bash
# One GPU call of the speed-vs-quality sweep on the embedded text-to-video model (bench/quality_sweep.py; device tool,
# carry [".wheels"] for diffusers). Arguments go to the sweep (e.g. --strip w3x8x8-stile-d5, --count 32, --pipeline
# DIR when the package's na_accel/tiny/t2v_pipeline is not in the tree). What comes back under $OUT:
# quality-sweep-<date>.json / .md / .png (and -strip.png with --strip), sweep.log and nvidia-smi.txt.
# Budget: the full sweep (64 prompts, 1 dense + 24 sparse configs, 16 steps, bf16) is meant to finish well inside
# 6 minutes on one H200; NA_ACCEL_AUTOTUNE defaults to 0 here (the kernel's measured default launch config, no
# autotuning inside the sweep; export NA_ACCEL_AUTOTUNE=1 to autotune). As a guard, no config starts after
# SWEEP_BUDGET_S (default 300) seconds: the rows done so far come back and the JSON lists the skipped ones.
set -o pipefail
cd "$(dirname "$0")/.."
export NA_ACCEL_AUTOTUNE=${NA_ACCEL_AUTOTUNE:-0}
source bench/gpu_env.sh
gpu_snapshot "$OUT/nvidia-smi.txt"
python3 bench/quality_sweep.py --out "$OUT" --budget-s "${SWEEP_BUDGET_S:-300}" "$@" 2>&1 | tee "$OUT/sweep.log"
status=${PIPESTATUS[0]}
ls -la "$OUT"
exit "$status"
