#!/usr/bin/env bash
# One GPU training round for the default model (docs/training.md, "GPU round"):
#   AE re-warm-up -> residual k-means refit -> quantized training  (one `train` run, by stage)
#   -> fp16 export -> model split into <= 15 MiB parts + sha256 -> summary and training log.
# Then scripts/gpu_check.py: the new model's GPU inference against the CPU (gpu_check.json).
# Everything it returns is written to $OUT (at most 8 files, each under 16 MiB).
#
#   scripts/gpu_round.sh [--smoke] [--data DIR] [--init MODEL] [--minutes M] [--steps N] [--config TOML]
#                        [--batch auto|N [--rate STEPS_PER_S]]
#
# Defaults: --data .gpu/data (from scripts/gpu_prep.sh: a fresh pack per round),
# --init src/spectrostream/models/default.safetensors, --minutes 8, configs/gpu_round.toml,
# OUT=${OUT:-runs/gpu_round_out}. --steps N also stops at step N (to repeat a round that its time
# limit stopped there). Wheels in .whl/ (soundfile, soxr, cffi, pycparser) are
# installed first when present. --smoke: a tiny model on synthetic audio on the CPU, the same
# steps end to end in about a minute (CI-sized; no GPU needed).
# --batch auto (default): bench/train_speed.py first times a few steps at the config's batch,
# 2x and 4x (about half a minute on a GPU; at most 2 min), and scripts/round_config.py takes the
# batch with the most audio per second; either way the lr decay is fitted to the second half of
# the round's steps. --batch N [--rate R] skips the probe (a second round in one session: the
# first round's round.json has both under "fit"). In a 600 s device call use --minutes 7.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/.gpu/data"
INIT="$ROOT/src/spectrostream/models/default.safetensors"
CONFIG="$ROOT/configs/gpu_round.toml"
MINUTES=8
STEPS=()
SMOKE=0
BATCH=auto
RATE=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    --data) DATA="$2"; shift 2 ;;
    --init) INIT="$2"; shift 2 ;;
    --minutes) MINUTES="$2"; shift 2 ;;
    --steps) STEPS=(--max-steps "$2"); shift 2 ;;
    --batch) BATCH="$2"; shift 2 ;;
    --rate) RATE=(--rate "$2"); shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    *) echo "gpu_round.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
# A pack below Vorbis quality 0.3 (FULL_BAND_QUALITY in spectrostream/data/pack.py) is low-passed
# at 16-17 kHz, and a model trained on it outputs nothing above that: refuse it.
if [[ $SMOKE == 0 && -f "$DATA/manifest.json" ]]; then
  "${PYTHON:-python3}" -c 'import json, sys
q = json.load(open(sys.argv[1])).get("vorbis_quality", 1.0)
sys.exit(f"gpu_round.sh: {sys.argv[1]}: Vorbis quality {q} is low-passed at 16-17 kHz;"
         " re-pack with spectrostream data pack (quality >= 0.3)" if q < 0.3 else 0)' \
    "$DATA/manifest.json" || exit 2
fi
OUT="${OUT:-$ROOT/runs/gpu_round_out}"
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_round.XXXXXX")"
PY="${PYTHON:-python3}"
# (not with --smoke: it runs here, on this machine's packages; the wheels are for the GPU image)
if [[ $SMOKE == 0 ]] && compgen -G "$ROOT/.whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "$ROOT"/.whl/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# The train/export entry point imports no data-building code (no PyAV needed).
SS=("$PY" -m spectrostream.train.cli)
LOG="$OUT/train.log"

if [[ $SMOKE == 1 ]]; then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  "$PY" "$ROOT/scripts/smoke_data.py" "$WORK/data"
  DATA="$WORK/data"
  CONFIG="$WORK/smoke.toml"
  "$PY" "$ROOT/scripts/smoke_data.py" --config "$CONFIG"
  # A tiny "previous default" to continue from, as a real round continues the shipped model.
  "${SS[@]}" train "$CONFIG" --data "$DATA" --out "$WORK/prev" --max-steps 2 > "$WORK/prev.log" 2>&1
  "${SS[@]}" export "$WORK/prev" -o "$WORK/prev.safetensors" --fp16
  INIT="$WORK/prev.safetensors"
  MINUTES=3
fi

[[ -d "$DATA" ]] || { echo "gpu_round.sh: no data folder $DATA (scripts/gpu_prep.sh makes it)" >&2; exit 2; }
[[ -f "$INIT" ]] || { echo "gpu_round.sh: no --init model $INIT" >&2; exit 2; }
command -v nvidia-smi > /dev/null && nvidia-smi -L | tee "$OUT/device.txt" || true

START=$(date +%s)
# The batch (a throughput probe, or --batch) and the lr decay fitted to this round's length.
FIT=("$PY" "$ROOT/scripts/round_config.py" "$CONFIG" -o "$WORK/round.toml" --minutes "$MINUTES"
     "${STEPS[@]}")
if [[ $BATCH == auto ]]; then
  read -r B0 AE < <("$PY" -c 'import sys; sys.path.insert(0, sys.argv[2])
from spectrostream.train.config import TrainConfig
c = TrainConfig.from_toml(sys.argv[1]); print(c.data.batch_size, c.quantizer.ae_steps)' \
    "$CONFIG" "$ROOT/src")
  timeout 120 "$PY" "$ROOT/bench/train_speed.py" --config "$CONFIG" --batch "$B0" $((2 * B0)) $((4 * B0)) \
    --steps 4 --warmup 2 --start-step $((AE + 1)) > "$WORK/probe.log" 2>&1 \
    || echo "gpu_round.sh: the batch probe failed (keeping the config's batch):" \
      "$(tail -n 3 "$WORK/probe.log")" >&2
  FIT+=(--probe "$WORK/probe.log")  # a JSON line per batch timed (all, or what 2 min held)
else
  FIT+=(--batch "$BATCH" "${RATE[@]}")
fi
"${FIT[@]}" | tee "$WORK/fit.json"
CONFIG="$WORK/round.toml"
set +e
"${SS[@]}" train "$CONFIG" --data "$DATA" --out "$WORK/run" --init "$INIT" \
  --max-minutes "$MINUTES" "${STEPS[@]}" 2>&1 | tee "$LOG"
RC=${PIPESTATUS[0]}
set -e
[[ $RC == 0 ]] || { echo "gpu_round.sh: training failed (exit $RC); log in $LOG" >&2; exit "$RC"; }

"${SS[@]}" export "$WORK/run" -o "$WORK/model.safetensors" --fp16 2>&1 | tee -a "$LOG"
cp "$WORK/run/train_config.json" "$WORK/train_config.json"
( cd "$WORK" && split -b 15M -d -a 2 model.safetensors model.safetensors.part- \
  && sha256sum model.safetensors > model.sha256 )
cp "$WORK"/model.safetensors.part-* "$WORK/model.sha256" "$OUT/"
"$PY" "$ROOT/scripts/round_summary.py" "$WORK/run" "$DATA" "$INIT" "$(( $(date +%s) - START ))" \
  "$WORK/fit.json" > "$OUT/round.json"
cat "$OUT/round.json"
# The new model's GPU path against its CPU path on this round's held-out music (codes, decoded
# SNR, speed; the GPU inference paths are otherwise untested). Bounded, and never fatal.
CHECK=(--device cuda --files 3 --seconds 20)
[[ $SMOKE == 1 ]] && CHECK=(--device cpu --files 1 --seconds 1)
timeout 150 "$PY" "$ROOT/scripts/gpu_check.py" "$WORK/model.safetensors" "$DATA/valid" "${CHECK[@]}" \
  > "$OUT/gpu_check.json" 2> "$WORK/check.log" \
  || echo "gpu_round.sh: gpu_check.py failed: $(tail -n 3 "$WORK/check.log")" >&2
NFILES=$(find "$OUT" -type f | wc -l)
echo "gpu_round.sh: $NFILES files in $OUT; reassemble with:" \
  "cat model.safetensors.part-* > model.safetensors && sha256sum -c model.sha256"
rm -rf "$WORK"
