#!/usr/bin/env bash
# The untimed comparison of the training objectives on whole suites (issue 4; reports/objectives-cpu):
#   vanilla   vanilla's greedy outputs on every question of SUITES (`--peer none`: nothing but vanilla;
#             these runs may share the machine: their timings are flagged busy and not used). They do
#             not depend on the drafters, so this step may run before the drafters are trained.
#   replays   `coral-bench replay` of each of REPLAY_DRAFTERS along those outputs: exact τ at T = 0,
#             with paired per-question CIs in the report (`make reports`).
# Each step runs in a clean git worktree of HEAD (scripts/worktree.sh; FRESH=1 after HEAD moved), so
# the runs and each replay record a clean git hash (a replay also its weights' sha256) and relative
# paths; finished runs and replays are copied back into RUNS here. Resumable: a finished run or a
# replayed label is skipped (FORCE=1 replays again).
#   STEPS=vanilla THREADS=1 bash scripts/objectives_cpu.sh            # beside training
#   STEPS=replays FRESH=1 bash scripts/objectives_cpu.sh              # once the drafters are shipped
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-reports/runs/objectives-cpu}  # relative to the repository root
WT=${WT:-$HOME/.cache/coral-bench/worktrees/objectives-cpu}
SUITES=${SUITES:-mtbench-test humaneval gsm8k}; TOKENS=${TOKENS:-128}; THREADS=${THREADS:-2}
LIMIT=${LIMIT:-}  # questions per suite (default: all of them)
REPLAY_DRAFTERS=${REPLAY_DRAFTERS:-eagle2 hass coral}
STEPS=${STEPS:-vanilla replays}
has() { [[ " $STEPS " == *" $1 "* ]]; }

source scripts/worktree.sh
clean_worktree "$WT" || exit 1
cb() { ( cd "$WT" && PYTHONPATH="$WT" .venv/bin/coral-bench "$@" ); }
mkdir -p "$RUNS"

if has vanilla; then
  for s in $SUITES; do
    out=$RUNS/$s
    [[ -f $out/results.json ]] && { echo "$out: done"; continue; }
    resume=(); [[ -f $WT/$out/config.json ]] && resume=(--resume)
    cb run --suite "$s" ${LIMIT:+--limit "$LIMIT"} --max-new-tokens "$TOKENS" --peer none --threads "$THREADS" \
      --out "$out" "${resume[@]}"
    rm -rf "$out" && cp -r "$WT/$out" "$out"
  done
fi

if has replays; then
  for s in $SUITES; do
    out=$RUNS/$s
    [[ -f $out/results.json ]] || { echo "$out: no vanilla run yet (STEPS=vanilla)" >&2; exit 1; }
    # the worktree replays its own copy of the run (HEAD may not hold it yet), then hands replays.json back
    [[ -f $WT/$out/results.json ]] || { mkdir -p "$WT/$RUNS" && cp -r "$out" "$WT/$out"; }
    done_labels=$(python3 -c 'import json,sys; print(" ".join(v["label"] for v in json.load(open(sys.argv[1])).values()))' \
      "$WT/$out/replays.json" 2>/dev/null || true)
    for d in $REPLAY_DRAFTERS; do
      [[ -z ${FORCE:-} && " $done_labels " == *" ${d%%=*} "* ]] && { echo "$s ${d%%=*}: replayed"; continue; }
      cb replay "$out" --drafter "$d" --threads "$THREADS"
      cp "$WT/$out/replays.json" "$out/replays.json"
    done
  done
fi
