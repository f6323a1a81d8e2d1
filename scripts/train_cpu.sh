#!/usr/bin/env bash
# The CPU path to the embedded default's drafters, resumable across sittings: run it in the
# background (nothing else timed meanwhile); it continues the first method not finished yet.
#   1. features (once, ~600 tokens/s on 2 cores):
#        coral-bench gen-data --from-ids IDS --max-prompts 11200 --out $DATA --threads 2 --resume
#      (IDS: training-data/smollm2-135m/ids.tar.xz unpacked)
#   2. bash scripts/train_cpu.sh        # again after an interruption: it resumes
#      (THREADS=1 leaves a core for untimed work beside it, e.g. replays; a run the OOM killer
#      ends resumes by itself, up to RETRIES=3 times)
# The three methods share data, epochs, lr, batch, seed and --loss-vocab (recorded in each drafter);
# each also gets the options selected for it by the tuning sweep (scripts/train-settings.txt, written
# by `python scripts/sweep_table.py SWEEP/*/ --select`; a method not listed there keeps its defaults).
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-$HOME/.cache/coral-bench/data/smollm2-feat-2m}
OUT=${OUT:-$HOME/.cache/coral-bench/drafters/smollm2-135m}
EPOCHS=${EPOCHS:-3}; THREADS=${THREADS:-2}; LR=${LR:-1e-3}; BATCH_TOKENS=${BATCH_TOKENS:-8192}; LOSS_VOCAB=${LOSS_VOCAB:-8192}
CB=${CB:-.venv/bin/coral-bench}; SETTINGS=${SETTINGS:-scripts/train-settings.txt}
RETRIES=${RETRIES:-3}  # restarts of a run killed by SIGKILL (out of memory), each from its last checkpoint
# glibc raises its mmap threshold whenever a large mapped block is freed, after which batches of a new
# shape every step fragment the heap and the resident size grows step by step; a fixed threshold
# keeps large blocks mapped (scripts/memory_probe.py shows both)
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1048576}
mkdir -p "$OUT"
source scripts/drafter_complete.sh
for m in ${METHODS:-eagle2 hass coral}; do
  if complete "$OUT/$m"; then echo "$m: done"; continue; fi
  selected=$(awk -v m="$m" '$1 == m { $1 = ""; print }' "$SETTINGS" 2>/dev/null)
  echo "$m: training ($(date -u +%H:%M))${selected:+ with$selected}"
  # shellcheck disable=SC2086  # the selected options are words
  for ((try = 0; ; try++)); do
    $CB train --method "$m" --data "$DATA" --out "$OUT/$m" --epochs "$EPOCHS" --lr "$LR" --batch-tokens "$BATCH_TOKENS" \
      --loss-vocab "$LOSS_VOCAB" --threads "$THREADS" --checkpoint-every 25 --resume $selected
    status=$?
    ((status == 0)) && break
    # killed by SIGKILL (137: the OOM killer): resume from the last checkpoint, up to RETRIES times
    ((status == 137 && try < RETRIES)) || exit $status
    echo "$m: killed (exit $status) at $(date -u +%H:%M); resuming from its last checkpoint"
  done
done
