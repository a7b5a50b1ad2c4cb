#!/usr/bin/env bash
# One GPU call of the embedded model's training (device tool; carry [".wheels", "run_t2v"] where run_t2v holds the
# checkpoint that an earlier call brought back). Arguments go to training/train_tiny_t2v.py. What comes back under
# $OUT (at most 8 files of at most 16 MiB): run.log, train_log.json, vae.pt, live.pt, ema.pt and pipeline.tar (the
# saved pipeline with eval.json and eval_samples.png, when the save / eval stages ran); a file over 15 MiB comes
# back as NAME.part-aa, NAME.part-ab, ... (`cat NAME.part-* > NAME` joins them).
set -o pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
RUN=/tmp/t2v_run
mkdir -p "$RUN/ckpt"
if [ -d run_t2v ]; then
  cp run_t2v/train_log.json "$RUN/" 2>/dev/null
  cp run_t2v/*.pt "$RUN/ckpt/" 2>/dev/null
  for f in run_t2v/*.pt.part-aa; do
    [ -e "$f" ] && cat "${f%.part-aa}".part-* > "$RUN/ckpt/$(basename "${f%.part-aa}")"
  done
fi
gpu_snapshot "$OUT/run.log"
python3 training/train_tiny_t2v.py --out "$RUN" "$@" 2>&1 | grep -v "it/s\]" | tee -a "$OUT/run.log"
status=${PIPESTATUS[0]}
cp "$RUN/train_log.json" "$OUT/" 2>/dev/null
[ "${CKPT:-1}" = 1 ] && cp "$RUN"/ckpt/*.pt "$OUT/" 2>/dev/null  # CKPT=0: only the log and the pipeline come back
if [ -d "$RUN/pipeline" ]; then
  tar -C "$RUN" -cf "$OUT/pipeline.tar" pipeline $(cd "$RUN" && ls eval.json eval_samples.png 2>/dev/null)
fi
for f in "$OUT"/*; do
  if [ "$(stat -c %s "$f")" -gt $((15 * 1024 * 1024)) ]; then
    split -b 15M "$f" "$f.part-" && rm "$f"
  fi
done
ls -la "$OUT"
exit "$status"
