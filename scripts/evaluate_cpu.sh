#!/usr/bin/env bash
# After scripts/train_cpu.sh, in STEPS order (each skipped when done, an interrupted run resumed):
#   ship      copy the three drafters into coral_bench/assets (scripts/ship_drafter.py)
#   router    retrain the shipped router setting (SHIP_ROUTER=RULE:N:K, default the sweep's choice
#             frequency:8:1) on $DRAFTERS/coral and ship it as coral-router (untimed, minutes)
#   runs      time RUN_DRAFTERS against vanilla on SUITES (--require-idle: nothing else may run)
#   profile   latency profile of each run, then the cost model's prediction (timed too)
#   auto      the three objectives with the tree the cost model picks here (`--tree auto`) on
#             AUTO_SUITE (the τ goal of issue 4), profiled like the runs: $RUNS/$AUTO_SUITE-auto
#   routers   train CORAL's router on the coral drafter for each RULE:N of ROUTERS (untimed)
#   replays   replay coral, each router at each k and the equal-cost frequency subsets on the
#             development split (untimed), then print the sweep table
# The untimed steps may share the machine (THREADS=1 beside training). Committed reference runs
# come from scripts/reference_cpu.sh (a clean worktree), which calls this script.
#   DRAFTERS=~/.cache/coral-bench/drafters/smollm2-135m-1ep bash scripts/evaluate_cpu.sh
#   STEPS="routers replays" THREADS=1 ROUTER_DIR=DIR DEV=RUN bash scripts/evaluate_cpu.sh  # the sweep
set -uo pipefail
cd "$(dirname "$0")/.."
DRAFTERS=${DRAFTERS:-$HOME/.cache/coral-bench/drafters/smollm2-135m}
DATA=${DATA:-$HOME/.cache/coral-bench/data/smollm2-feat-2m}
RUNS=${RUNS:-reports/runs/reference-cpu}  # committed runs: use scripts/reference_cpu.sh (a clean hash)
LIMIT=${LIMIT:-16}; TOKENS=${TOKENS:-128}; SUITES=${SUITES:-mtbench-test humaneval gsm8k}
ROUTER_SEQ=${ROUTER_SEQ:-600}; ROUTER_DIR=${ROUTER_DIR:-$DRAFTERS}; ROUTER_KS=${ROUTER_KS:-1 2 4}
ROUTERS=${ROUTERS:-frequency:8 frequency:16 frequency:32 cluster:8 cluster:16 cluster:32 contiguous:8 contiguous:16 contiguous:32}
FS_SIZES=${FS_SIZES:-1536 3072 6144 12288 24576}  # FR-Spec-style subsets at the head cost of N,k pairs: k*V/N
THREADS=${THREADS:-2}  # torch threads of the untimed steps
CB=${CB:-.venv/bin/coral-bench}; PY=${PY:-.venv/bin/python}
# the timed drafters: names run the shipped weights; add LABEL=NAME:CKPT@... specs as you like
RUN_DRAFTERS=${RUN_DRAFTERS:-eagle2 hass coral oracle}
STEPS=${STEPS:-ship router runs profile routers replays}
has() { [[ " $STEPS " == *" $1 "* ]]; }

if has ship; then
  for m in eagle2 hass coral; do
    $PY scripts/ship_drafter.py "$DRAFTERS/$m" "$m" --replace || exit $?
  done
fi

if has router; then  # CORAL's two stages: the router is trained on the stage-1 drafter it will serve
  IFS=: read -r rule n k <<< "${SHIP_ROUTER:-frequency:8:1}"; out="$DRAFTERS/coral-router-$rule-$n-k$k"
  if [[ ! -f $out/config.json ]]; then
    rm -rf "$out"  # not resumable (minutes): a cut one starts again
    $CB train-router --drafter "$DRAFTERS/coral" --data "$DATA" --router-groups "$n" --router-k "$k" \
      --partition "$rule" --max-sequences "$ROUTER_SEQ" --eval-fraction 0.02 --threads "$THREADS" --out "$out" || exit $?
  fi
  $PY scripts/ship_drafter.py "$out" coral-router --replace || exit $?
fi

run_once() {  # OUT, then run options: skip a finished run, resume an interrupted one
  local out=$1; shift
  [[ -f $out/results.json ]] && { echo "$out: done"; return 0; }
  local resume=(); [[ -f $out/config.json ]] && resume=(--resume)
  $CB run "$@" --threads 2 --require-idle --out "$out" "${resume[@]}"
}

if has runs; then
  drafter_args=(); for d in $RUN_DRAFTERS; do drafter_args+=(--drafter "$d"); done
  for s in $SUITES; do
    run_once "$RUNS/$s" --suite "$s" --limit "$LIMIT" --max-new-tokens "$TOKENS" "${drafter_args[@]}" || exit $?
  done
fi

if has profile; then  # latency profile of each run's target and drafters, then the cost model's prediction
  for s in $SUITES; do
    [[ -f $RUNS/$s/profile.json ]] && { echo "$RUNS/$s: profiled"; continue; }
    $CB profile --run "$RUNS/$s" --nodes "${PROFILE_NODES:-1,2,4,8,16,32}" || exit $?
    $CB estimate-speedup "$RUNS/$s" || exit $?
  done
fi

if has auto; then  # issue 4's goal is stated for the tree the cost model picks on this machine
  AUTO_SUITE=${AUTO_SUITE:-mtbench-test}; out="$RUNS/$AUTO_SUITE-auto"
  run_once "$out" --suite "$AUTO_SUITE" --limit "$LIMIT" --max-new-tokens "$TOKENS" --tree auto \
    --drafter eagle2 --drafter hass --drafter coral || exit $?
  if [[ ! -f $out/profile.json ]]; then
    $CB profile --run "$out" --nodes "${PROFILE_NODES:-1,2,4,8,16,32}" || exit $?
    $CB estimate-speedup "$out" || exit $?
  fi
fi

if has routers; then
  for spec in $ROUTERS; do
    rule=${spec%%:*}; n=${spec##*:}; out="$ROUTER_DIR/coral-router-$rule-$n"
    [[ -f $out/config.json ]] && { echo "$out: done"; continue; }
    rm -rf "$out"  # not resumable (minutes): a cut one starts again
    # eval fraction and seed of the stage-1 training: recall is measured on sequences it never saw
    $CB train-router --drafter "$DRAFTERS/coral" --data "$DATA" --router-groups "$n" --router-k 2 \
      --partition "$rule" --max-sequences "$ROUTER_SEQ" --eval-fraction 0.02 --threads "$THREADS" --out "$out" || exit $?
  done
fi

if has replays; then
  DEV=${DEV:-runs/dev-mtbench-$TOKENS}
  run_once "$DEV" --suite mtbench-dev --limit "$LIMIT" --max-new-tokens "$TOKENS" || exit $?
  specs=("coral=coral:$DRAFTERS/coral")
  counts=""  # any frequency-partitioned router carries the training-data token counts (@vocab=V)
  for spec in $ROUTERS; do
    rule=${spec%%:*}; n=${spec##*:}
    [[ $rule == frequency ]] && counts="$ROUTER_DIR/coral-router-$rule-$n"
    for k in $ROUTER_KS; do specs+=("r-$rule-$n-k$k=coral-router:$ROUTER_DIR/coral-router-$rule-$n@router_k=$k"); done
  done
  if [[ -n $counts ]]; then for v in $FS_SIZES; do specs+=("fs-$v=coral:$counts@vocab=$v"); done; fi
  specs+=(${EXTRA_REPLAYS:-})  # e.g. chains: "coral-c3=coral:DIR/coral@tree=chain:3"
  # the label → drafter map first, so that the table can read a sweep cut short
  $PY - "$DEV/replay-args.json" "${specs[@]}" <<'PYEOF'
import json, sys
from pathlib import Path
path, specs = Path(sys.argv[1]), sys.argv[2:]
known = json.loads(path.read_text()) if path.exists() else {}
known.update({s.split("=", 1)[0]: s for s in specs})
path.write_text(json.dumps(known, indent=1))
PYEOF
  done_labels=$($PY -c 'import json,sys; print(" ".join(v["label"] for v in json.load(open(sys.argv[1])).values()))' \
    "$DEV/replays.json" 2>/dev/null)
  for d in "${specs[@]}"; do
    # a label already replayed is skipped (resumable); FORCE=1 replays it again
    [[ -z ${FORCE:-} && " $done_labels " == *" ${d%%=*} "* ]] && { echo "${d%%=*}: replayed"; continue; }
    $CB replay "$DEV" --drafter "$d" --threads "$THREADS" || exit $?
  done
  $PY scripts/router_table.py "$DEV"
fi
