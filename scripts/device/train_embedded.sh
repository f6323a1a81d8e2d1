#!/usr/bin/env bash
# Call 2 ON THE GPU MACHINE: training data for the embedded target (by default the features of the
# committed ids in training-data/; FROM_IDS=0 generates new data) + the eagle2 / hass / coral
# drafters shipped in coral_bench/assets/, all inside one call's time. Everything that comes back
# is written to $OUT (at most 8 files): one tar per drafter, the ids-only export of the store, logs.
#   DEADLINE   seconds from start by which $OUT must be complete (default 540)
#   GEN_LIMIT  seconds of generation before the store is closed with the prompts done (default 210)
#   EPOCHS, LR, BATCH_TOKENS, SEED: training settings shared by all three methods
#   CAL_S, MIN_SEQ: calibration seconds; the fewest sequences to train on (see below)
# Re-running on the same warm machine continues (every step takes --resume).
#   DEV (cuda), GEN_ARGS (extra gen-data options): for a dry run of this script on a CPU
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
DEADLINE=${DEADLINE:-540}; GEN_LIMIT=${GEN_LIMIT:-210}
EPOCHS=${EPOCHS:-3}; LR=${LR:-1e-3}; SEED=${SEED:-0}; DEV=${DEV:-cuda}; GEN_ARGS=${GEN_ARGS:-}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source scripts/device/setup.sh || exit 1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
MEM=$(python3 -c "import torch; print(torch.cuda.get_device_properties(0).total_memory >> 30 if torch.cuda.is_available() else 0)")
BATCH_TOKENS=${BATCH_TOKENS:-$([ "$MEM" -ge 100 ] && echo 32768 || echo 16384)}
W=${WORK:-/tmp/coral-work}; mkdir -p $W  # /tmp survives between calls on a warm machine; ignored repo files do not
LOG=$W/logs; mkdir -p $LOG
elapsed() { echo $(( $(date +%s) - T0 )); }
pack() {  # everything that must come back, re-run at the end and on the way out
  for m in eagle2 hass coral; do
    [ -f $W/$m/config.json ] && tar cf "$OUT/$m.tar" -C $W $m/config.json $m/model.safetensors $m/train-log.jsonl
  done
  [ "${FROM_IDS:-1}" != 1 ] && [ -f $W/ids/manifest.json ] && tar cJf "$OUT/store-ids.tar.xz" -C $W ids
  cp $W/store/manifest.json $LOG/store-manifest.json 2>/dev/null
  tar czf "$OUT/logs.tar.gz" -C $W logs
}
trap pack EXIT
{ nvidia-smi -L 2>/dev/null; echo "mem ${MEM} GiB; batch tokens $BATCH_TOKENS; git ${CORAL_BENCH_GIT_HASH:-?}"; } | tee $LOG/machine.txt

if [ "${FROM_IDS:-1}" = 1 ] && [ -f training-data/smollm2-135m/ids.tar.xz ]; then
  # The committed ids (generated on a GPU before): only the teacher-forced forward is left.
  echo "== features from the committed ids ($(elapsed) s)"
  tar xJf training-data/smollm2-135m/ids.tar.xz -C $W
  $CB gen-data --from-ids $W/ids --out $W/store --batch-size 512 --max-batch-tokens 262144 \
    --shard-tokens 1048576 --dtype bfloat16 --device $DEV --resume > $LOG/gen-data.log 2>&1
  rc=$?; tail -14 $LOG/gen-data.log; [ $rc -eq 0 ] || exit $rc
else
  echo "== gen-data ($(elapsed) s)"
  $CB gen-data --out $W/store --sources .devcarry/sharegpt-first-turns.json,gsm8k --max-new-tokens 256 \
    --batch-size 1024 --max-batch-tokens 262144 --shard-tokens 1048576 --dtype bfloat16 --device $DEV \
    --time-limit "$GEN_LIMIT" --resume $GEN_ARGS > $LOG/gen-data.log 2>&1
  rc=$?; tail -20 $LOG/gen-data.log; [ $rc -eq 0 ] || exit $rc
  $CB gen-data --from-ids $W/store --ids-only --out $W/ids --device cpu > $LOG/ids-export.log 2>&1
fi

# One method at a time with the whole GPU: three processes × 16 threads on 16 cores (and 3 × ~45 GB
# of GPU memory) made every step take 2–20 s and one process run out of memory (first H200 try).
DECODE_S=${DECODE_S:-90}  # kept for a decoder check with the new drafters (0: none)
COMMON=(--epochs "$EPOCHS" --lr "$LR" --batch-tokens "$BATCH_TOKENS" --seed "$SEED" --dtype bf16 --device $DEV --threads 8)
# Calibrate: CAL_S seconds of coral → the largest store prefix (at least MIN_SEQ sequences, ≈ 2.1M
# response tokens) on which all three methods finish EPOCHS epochs (eagle2 counted as half a coral).
CAL_S=${CAL_S:-15}; MIN_SEQ=${MIN_SEQ:-11200}
echo "== calibration: ${CAL_S} s of coral ($(elapsed) s)"
$CB train --method coral --data $W/store --out $W/cal-coral "${COMMON[@]}" --checkpoint-every 0 --resume \
  --time-limit "$CAL_S" > $LOG/cal-coral.log 2>&1 || { tail $LOG/cal-coral.log; exit 1; }
LEFT=$(( DEADLINE - $(elapsed) - 60 - DECODE_S ))
N=$(python3 scripts/device/fit_subset.py $W/store $(( LEFT * 8 / 10 )) "$EPOCHS" $W/cal-coral:2.5 --min-sequences "$MIN_SEQ")
TOTAL=$(python3 -c "import json; print(json.load(open('$W/store/manifest.json'))['counts']['sequences'])")
DATA=$W/store
if [ "$N" -lt "$TOTAL" ]; then
  echo "== training on the first $N of $TOTAL sequences ($(elapsed) s)"
  $CB gen-data --from-ids $W/ids --max-prompts "$N" --out $W/train-store --batch-size 512 --max-batch-tokens 262144 \
    --shard-tokens 1048576 --dtype bfloat16 --device $DEV --resume > $LOG/train-store.log 2>&1 || exit 1
  DATA=$W/train-store
fi
echo "$N of $TOTAL sequences" >> $LOG/machine.txt
# Time limits as a safety net; shares follow the cost: eagle2 1, hass 2, coral 2 (of 5).
LEFT=$(( DEADLINE - $(elapsed) - 60 - DECODE_S ))
for m in eagle2 hass coral; do
  share=$([ $m = eagle2 ] && echo 1 || echo 2)
  TL=$(( LEFT * share / 5 ))
  echo "== train $m, at most ${TL} s ($(elapsed) s)"
  $CB train --method $m --data $DATA --out $W/$m "${COMMON[@]}" --checkpoint-every 100 --resume \
    --time-limit "$TL" > $LOG/train-$m.log 2>&1
  tail -3 $LOG/train-$m.log
done
if [ "$DECODE_S" -gt 0 ] && [ -f $W/coral/config.json ]; then
  # The GPU decoder beside hf-vanilla with the new drafters (a smoke run once showed vanilla far
  # slower than hf-vanilla on CUDA with a tiny model: look at the cycles).
  echo "== decoder check, at most ${DECODE_S} s ($(elapsed) s)"
  timeout "$DECODE_S" $CB run --suite mtbench --limit 4 --max-new-tokens 128 --device $DEV --dtype bfloat16 \
    --drafter prompt-lookup --drafter eagle2:$W/eagle2 --drafter hass:$W/hass --drafter coral:$W/coral \
    --out $W/logs/run > $LOG/run.log 2>&1
  tail -16 $LOG/run.log
fi
echo "== done ($(elapsed) s)"
