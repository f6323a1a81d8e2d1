#!/usr/bin/env bash
# The reference runs of the embedded default (reports/reference-cpu), made from a clean checkout
# of HEAD: a git worktree outside the working tree runs scripts/evaluate_cpu.sh (timed runs on an
# idle machine, then the latency profile and the cost model's prediction), so every run records a
# clean git hash even while the working tree is edited meanwhile. Finished run directories are
# copied back into reports/runs/reference-cpu/. Resumable: run it again after an interruption (the
# worktree keeps the partial run; a HEAD that moved since is refused, FRESH=1 starts over).
#   bash scripts/reference_cpu.sh
#   RUN_DRAFTERS="eagle2 coral" SUITES=gsm8k bash scripts/reference_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-reports/runs/reference-cpu}
WT=${WT:-$HOME/.cache/coral-bench/worktrees/reference-cpu}
# every shipped drafter, the FR-Spec-style subset at the routed head's cost, model-free and bound
export RUN_DRAFTERS=${RUN_DRAFTERS:-eagle2 hass coral coral-router \
fs6144=coral:coral_bench/assets/smollm2-135m/coral-router@vocab=6144 prompt-lookup oracle}
export LIMIT=${LIMIT:-16} TOKENS=${TOKENS:-128} SUITES=${SUITES:-mtbench-test humaneval gsm8k}

[[ -z $(git status --porcelain --untracked-files=no) ]] || echo "note: uncommitted edits are not measured: HEAD is"
head=$(git rev-parse HEAD)
if [[ -d $WT && ${FRESH:-} == 1 ]]; then git worktree remove --force "$WT"; fi
if [[ -d $WT ]]; then
  was=$(git -C "$WT" rev-parse HEAD)
  [[ $was == "$head" ]] || { echo "reference_cpu: $WT holds runs of ${was:0:7}, HEAD is ${head:0:7}: FRESH=1 to start over" >&2; exit 1; }
else
  git worktree add --detach "$WT" "$head" >/dev/null
fi
ln -sfn "$ROOT/.venv" "$WT/.venv"
# the worktree's coral_bench comes first on the path, ahead of the editable install of this one
( cd "$WT" && PYTHONPATH="$WT" RUNS="$RUNS" STEPS="runs profile" bash scripts/evaluate_cpu.sh )
mkdir -p "$RUNS"
for s in $SUITES; do
  rm -rf "${RUNS:?}/$s" && cp -r "$WT/$RUNS/$s" "$RUNS/$s"
done
echo "reference_cpu: runs of ${head:0:7} in $RUNS/"
