"""The trees ``--tree auto`` (the run's default) chose for this machine: shape, what the cost model predicted
on the dev prompts, what the run then measured, and whether the choice came from the machine's cache."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .blocks import DASH, Section, Table, Text, num, times
from coral_bench.rundir.reader import Run


def _chosen(choice: Mapping[str, Any], key: str, grid_key: str) -> float | None:
    """A chosen tree's predicted value; runs recorded before it was stored carry it only in the grid."""
    if key in choice:
        return choice[key]
    return next((g[grid_key] for g in choice.get("grid", []) if g["tree"] == choice["tree"]), None)


def _how(choice: Mapping[str, Any]) -> str:
    cache = choice.get("cache")
    if cache is None:
        return "measured in this run"
    machine = cache.get("machine", {})
    facts = ", ".join(str(x) for x in (machine.get("cpu"), "+".join(machine.get("cpu_flags", [])),
                                        machine.get("dtype"), f"{machine.get('threads')} threads") if x)
    when = f" {cache['measured_at'][:10]}" if cache.get("measured_at") else ""
    return f"{cache['status']}{when} ({facts})" if facts else f"{cache['status']}{when}"


def chosen_trees(runs: Sequence[Run]) -> Section | None:
    rows = []
    for run in runs:
        drafters = ((run.config.get("tree_auto") or {}).get("drafters")) or {}
        measured = {d.label: d for d in run.drafters}
        for label, choice in drafters.items():
            m = measured.get(label)
            rows.append((run.label, label, choice["tree"], str(len(choice.get("grid", []))),
                         times(_chosen(choice, "speedup_predicted", "speedup_predicted")),
                         num(_chosen(choice, "tau_dev", "tau")), times(m.speedup) if m else DASH,
                         num(m.tau_pooled) if m else DASH, _how(choice)))
    if not rows:
        return None
    table = Table(("run", "method", "tree chosen", "candidates", "predicted speedup (dev)", "τ (dev)",
                   "measured speedup", "τ pooled", "choice"), tuple(rows))
    note = Text("`--tree auto`, the default of `coral-bench run`: for each EAGLE-style drafter without its own "
                "`@tree`, the candidate of its grid (the current CPU grid: chains of 2–5 drafted tokens and dynamic "
                "trees of 6–16 nodes; on a GPU up to 64 nodes) with the highest speedup the cost model predicts "
                "from a quick profile of this machine and the drafter's τ replayed on a few `mtbench-dev` prompts. It is measured once per machine "
                "fingerprint (CPU model and flags or accelerator, dtype, threads, torch, target) and drafter "
                "weights, then cached (docs/methods.md §7).", "note")
    return Section("chosen-trees", "Trees chosen for this machine", (table, note))
