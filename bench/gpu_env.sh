# Sourced by the GPU cycle scripts: install the carried wheels (.wheels/, e.g. diffusers) for modules the GPU image
# lacks, into /tmp/site, and put it and the repository on PYTHONPATH.
for w in .wheels/*.whl; do
  [ -e "$w" ] || continue
  name=$(basename "$w" | cut -d- -f1 | tr 'A-Z' 'a-z')
  mod=$([ "$name" = pyyaml ] && echo yaml || echo "$name")
  python3 -c "import $mod" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target /tmp/site "$w"
done
export PYTHONPATH=/tmp/site:.
