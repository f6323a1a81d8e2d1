#!/usr/bin/env bash
# The reference runs of the embedded default (reports/reference-cpu), made from a clean checkout
# of HEAD: a git worktree outside the working tree runs scripts/evaluate_cpu.sh (timed runs on an
# idle machine, then the latency profile and the cost model's prediction; plus the three objectives
# with `--tree auto` on mtbench-test, the tree the cost model picks), so every run records a
# clean git hash even while the working tree is edited meanwhile. Finished run directories are
# copied back into reports/runs/reference-cpu/. Resumable: run it again after an interruption (the
# worktree keeps the partial run; a HEAD that moved since is refused, FRESH=1 starts over).
#   bash scripts/reference_cpu.sh
#   RUN_DRAFTERS="eagle2 coral" SUITES=gsm8k bash scripts/reference_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-reports/runs/reference-cpu}
# inside the worktree the runs go to an ignored folder: HEAD's committed runs in $RUNS would count as
# finished, and deleting them (tracked files) would make the worktree dirty
WT_RUNS=${WT_RUNS:-runs/reference-cpu}
WT=${WT:-$HOME/.cache/coral-bench/worktrees/reference-cpu}
# every shipped drafter, the FR-Spec-style subset at the routed head's cost, model-free and bound
export RUN_DRAFTERS=${RUN_DRAFTERS:-eagle2 hass coral coral-router \
fs6144=coral:coral_bench/assets/smollm2-135m/coral-router@vocab=6144 prompt-lookup oracle}
export LIMIT=${LIMIT:-16} TOKENS=${TOKENS:-128} SUITES=${SUITES:-mtbench-test humaneval gsm8k}

source scripts/worktree.sh
clean_worktree "$WT" || exit 1
# the worktree's coral_bench comes first on the path, ahead of the editable install of this one
( cd "$WT" && PYTHONPATH="$WT" RUNS="$WT_RUNS" STEPS="runs profile auto" bash scripts/evaluate_cpu.sh )
mkdir -p "$RUNS"
for s in $SUITES "${AUTO_SUITE:-mtbench-test}-auto"; do
  rm -rf "${RUNS:?}/$s" && cp -r "$WT/$WT_RUNS/$s" "$RUNS/$s"
done
echo "reference_cpu: runs of $(git -C "$WT" rev-parse --short HEAD) in $RUNS/"
