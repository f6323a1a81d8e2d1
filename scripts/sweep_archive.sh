#!/usr/bin/env bash
# Copy a training sweep's record into the repository: each trial's config.json and train-log.jsonl
# (no weights; the home folder written ~), and the sweep table with the selection it implies.
#   bash scripts/sweep_archive.sh [SWEEP_DIR] [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP=${1:-$HOME/.cache/coral-bench/sweep/smollm2-135m}
DEST=${2:-reports/runs/training-sweep-cpu}
mkdir -p "$DEST"
for dir in "$SWEEP"/*/ "$SWEEP-noise"/*/; do
  [[ -f $dir/config.json ]] || continue
  out=$DEST/$(basename "$dir"); mkdir -p "$out"
  for f in config.json train-log.jsonl; do sed "s|$HOME|~|g" "$dir/$f" > "$out/$f"; done
done
{
  echo "# Training sweep: held-out agreement per trial"
  echo
  echo "\`python scripts/sweep_table.py $DEST/*/\` (trials with a -seedN suffix repeat a setting with"
  echo "another seed on the same held-out split: the noise between runs of one setting)."
  echo
  python3 scripts/sweep_table.py "$DEST"/*/
  echo
  echo "Selected (scripts/train-settings.txt):"
  echo
  echo '```'
  python3 scripts/sweep_table.py $(ls -d "$DEST"/*/ | grep -v -- '-seed[0-9]*/$') --select
  echo '```'
} > "$DEST/sweep.md"
echo "sweep_archive: $DEST"
