# Sourced by the scripts that make committed runs. clean_worktree DIR: a git worktree of HEAD at DIR
# (outside the working tree), so that runs record a clean git hash while the checkout is edited;
# an existing DIR is kept for resuming only while it holds HEAD (FRESH=1 starts over). Runs inside
# it use this checkout's virtual environment, with the worktree's coral_bench first on the path:
#   clean_worktree "$WT" && ( cd "$WT" && PYTHONPATH="$WT" bash scripts/… )
clean_worktree() {
  local wt=$1 head was
  [[ -z $(git status --porcelain --untracked-files=no) ]] || echo "note: uncommitted edits are not measured: HEAD is"
  head=$(git rev-parse HEAD)
  if [[ -d $wt && ${FRESH:-} == 1 ]]; then git worktree remove --force "$wt"; fi
  if [[ -d $wt ]]; then
    was=$(git -C "$wt" rev-parse HEAD)
    [[ $was == "$head" ]] || { echo "$wt holds runs of ${was:0:7}, HEAD is ${head:0:7}: FRESH=1 to start over" >&2; return 1; }
  else
    git worktree add --detach "$wt" "$head" >/dev/null || return 1
  fi
  ln -sfn "$PWD/.venv" "$wt/.venv"
}
