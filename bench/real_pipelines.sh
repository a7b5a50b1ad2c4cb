#!/usr/bin/env bash
# One GPU call of bench/real_pipelines.py: one family's whole pipeline at real size (random weights, built in code and
# saved to .bench_models/, reused while the machine stays warm), `na-accel generate --model DIR` per variant, time
# per phase and peak GPU memory into $OUT/real-pipelines-<family>-<date>.json and .md (rewritten after every variant).
# Needs, carried as wheels in .wheels/ (bench/gpu_env.sh installs them): diffusers==0.42.1 and imageio-ffmpeg==0.5.1
# (MP4 output; 27 MB, where 0.8.x is 68 MB and exceeds the 64 MiB carry beside diffusers); the GPU image has torch,
# triton, transformers, accelerate, imageio, typer and PyYAML.
# Env: FAMILY (hunyuan | wan | wan1.3b | flux; default hunyuan), VARIANTS (space separated, default "dense preset
# preset+fbc preset+compile"; see the script), STEPS (default 4), BUDGET_S (default 480: seconds from the script's
# start, the model build included; no variant starts later, and each may run until BUDGET_S + 60 s, at least 60 s:
# so a call ends inside its 10 minutes when one variant takes < 2 minutes, and a budget that the build nearly uses
# up leaves the first variant only 60 s). More arguments go to the script.
# A call returns at most 8 files: results JSON + MD, the log and nvidia-smi.txt (videos stay in .bench_models/).
set -o pipefail
cd "$(dirname "$0")/.."
export NA_ACCEL_AUTOTUNE=${NA_ACCEL_AUTOTUNE:-0}
source bench/gpu_env.sh
gpu_snapshot "$OUT/nvidia-smi.txt"
df -h . /tmp | tee -a "$OUT/nvidia-smi.txt"
# shellcheck disable=SC2086 # VARIANTS is a list
python3 bench/real_pipelines.py --family "${FAMILY:-hunyuan}" --out "$OUT" --steps "${STEPS:-4}" \
  --budget-s "${BUDGET_S:-480}" --variants ${VARIANTS:-dense preset preset+fbc preset+compile} "$@" 2>&1 \
  | tee "$OUT/real-pipelines-${FAMILY:-hunyuan}.log"
status=${PIPESTATUS[0]}
ls -la "$OUT"
exit "$status"
