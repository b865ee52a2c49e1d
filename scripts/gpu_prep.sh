#!/usr/bin/env bash
# Everything a GPU round (scripts/gpu_round.sh) needs, made on this CPU machine from nothing, so
# that a session which is lent a GPU can call it at once (docs/training.md, "A GPU round"):
#   1. the corpus (`spectrostream data debian`), unless CORPUS/manifest.json is there already;
#   2. a fresh full-band pack of it in .gpu/data (`spectrostream data pack --seed SEED`);
#   3. the wheels the GPU image lacks, in .whl/ (CPython 3.12, x86_64; skipped if present);
#   4. a check that the working tree, the pack and the wheels fit the 64 MiB a device call carries.
#
#   scripts/gpu_prep.sh [--corpus DIR] [--out DIR] [--wheels DIR] [--seed N] [-- PACK_OPTIONS...]
#
# Defaults: --corpus /work/data/corpus, --out .gpu/data, --wheels .whl, --seed: the clock's
# seconds (a new subset every round); the pack gets --minutes 20 --max-mib 19, then PACK_OPTIONS
# (which win). CARRY_MIB (default 64) is the limit checked. Measured on the 2-core VM from an
# empty machine (30 Nov 2026): the corpus 8 minutes (1.3 GB of packages), the pack 37 s.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CORPUS=/work/data/corpus
OUTDIR="$ROOT/.gpu/data"
WHEELS="$ROOT/.whl"
SEED="$(date +%s)"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --corpus) CORPUS="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "gpu_prep.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
CARRY_MIB="${CARRY_MIB:-64}"

if [[ ! -f "$CORPUS/manifest.json" ]]; then
  echo "== corpus -> $CORPUS ($(date -u +%H:%M:%S) UTC)"
  "$PY" -m spectrostream data debian -o "$CORPUS" --workdir "$CORPUS.debs" --no-progress
fi

echo "== pack (seed $SEED) -> $OUTDIR ($(date -u +%H:%M:%S) UTC)"
"$PY" -m spectrostream data pack "$CORPUS" -o "$OUTDIR" --minutes 20 --max-mib 19 \
  --seed "$SEED" --overwrite --no-progress "$@"

if ! compgen -G "$WHEELS/soundfile-*.whl" > /dev/null; then
  echo "== wheels -> $WHEELS ($(date -u +%H:%M:%S) UTC)"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$WHEELS" soundfile cffi pycparser soxr typing_extensions
fi

# What a device call carries: the tracked files, untracked files git does not ignore, and the
# carried folders. (Counted in bytes of the files, as the device tool counts them.)
cd "$ROOT"
if ! git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  echo "gpu_prep.sh: $ROOT is not a git checkout; the 64 MiB check is skipped" >&2
  exit 0
fi
tree_bytes=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } \
  | { xargs -0 -r du -cb 2>/dev/null || true; } | awk '$2 == "total" {s += $1} END {print s + 0}')
carry_bytes=$(du -cb "$OUTDIR" "$WHEELS" | awk '$2 == "total" {print $1}')
total=$((tree_bytes + carry_bytes))
awk -v t="$tree_bytes" -v c="$carry_bytes" -v m="$CARRY_MIB" 'BEGIN {
  printf "== carried: working tree %.1f MiB + pack and wheels %.1f MiB = %.1f of %d MiB\n",
    t / 1048576, c / 1048576, (t + c) / 1048576, m }'
if (( total > CARRY_MIB * 1048576 )); then
  echo "gpu_prep.sh: over the ${CARRY_MIB} MiB a device call carries; lower --max-mib" >&2
  exit 1
fi
echo "ready: run(command=\"export PYTHONUNBUFFERED=1; OUT=\$OUT bash scripts/gpu_round.sh" \
  "--minutes 7\", carry=[\".gpu/data\", \".whl\"], timeout_s=590)  (with the default --out and --wheels)"
