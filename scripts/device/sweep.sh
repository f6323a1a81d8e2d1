#!/usr/bin/env bash
# ON THE GPU MACHINE, after train_embedded.sh on the same warm machine (its work folder in /tmp):
# the CSRA sweep (τ_c × λ = 3 × 2, plus the step-1 stop-gradient anchor) and as many HASS trials
# (distill_k × step_decay = 3 × 2, plus history=exclude), each one epoch on the first SUBSET
# sequences of the store, same lr / batch / seed; selection by held-out agreement
# (scripts/sweep_table.py). $OUT gets sweep.tar.gz (logs and configs, no weights) and sweep.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s); elapsed() { echo $(( $(date +%s) - T0 )); }
DEADLINE=${DEADLINE:-540}; SUBSET=${SUBSET:-6000}; LR=${LR:-1e-3}; SEED=${SEED:-0}; DEV=${DEV:-cuda}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source scripts/device/setup.sh || exit 1
W=${WORK:-/tmp/coral-work}; S=$W/sweep; mkdir -p $S/logs
MEM=$(python3 -c "import torch; print(torch.cuda.get_device_properties(0).total_memory >> 30 if torch.cuda.is_available() else 0)")
BATCH_TOKENS=${BATCH_TOKENS:-$([ "$MEM" -ge 100 ] && echo 32768 || echo 16384)}
pack() {
  for d in $S/*/; do [ -f $d/config.json ] && mkdir -p $S/logs/$(basename $d) && cp $d/config.json $d/train-log.jsonl $S/logs/$(basename $d)/; done
  python3 scripts/sweep_table.py $S/*/ > "$OUT/sweep.md" 2>/dev/null
  tar czf "$OUT/sweep.tar.gz" -C $S logs
}
trap pack EXIT
[ -d $W/ids ] || tar xJf training-data/smollm2-135m/ids.tar.xz -C $W
$CB gen-data --from-ids $W/ids --max-prompts "$SUBSET" --out $W/subset --batch-size 512 --max-batch-tokens 262144 \
  --shard-tokens 1048576 --dtype bfloat16 --device $DEV > $S/logs/subset.log 2>&1 || { tail $S/logs/subset.log; exit 1; }
mapfile -t TRIALS < <(grep -v "^#" scripts/sweep-trials.txt)
n=${#TRIALS[@]}
for i in "${!TRIALS[@]}"; do
  read -r method name args <<< "${TRIALS[$i]}"
  TL=$(( (DEADLINE - $(elapsed) - 30) / (n - i) ))
  [ "$TL" -lt 15 ] && { echo "out of time before $name"; break; }
  echo "== $method $name, at most ${TL} s ($(elapsed) s)"
  $CB train --method $method --data $W/subset --out $S/$method-$name --epochs 1 --lr "$LR" --batch-tokens "$BATCH_TOKENS" \
    --seed "$SEED" --dtype bf16 --device $DEV --threads 8 --checkpoint-every 0 --time-limit "$TL" $args \
    > $S/logs/$method-$name.log 2>&1
  tail -2 $S/logs/$method-$name.log
done
