# Sourced (from the repository root) by every GPU script: unbuffered Python, $OUT (default /tmp/na_out) created,
# the carried wheels (.wheels/, e.g. diffusers) installed into /tmp/site for modules the GPU image lacks, /tmp/site
# and the repository on PYTHONPATH, and gpu_snapshot FILE: the GPU's name, memory, clock, temperature and power.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/na_out}
mkdir -p "$OUT"
for w in .wheels/*.whl; do
  [ -e "$w" ] || continue
  name=$(basename "$w" | cut -d- -f1 | tr 'A-Z' 'a-z')
  mod=$([ "$name" = pyyaml ] && echo yaml || echo "$name")
  python3 -c "import $mod" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target /tmp/site "$w"
done
export PYTHONPATH=/tmp/site:.
gpu_snapshot() {
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,temperature.gpu,power.draw --format=csv | tee "$1"
}
