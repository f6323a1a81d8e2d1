"""The report section on replayed acceptance (``coral-bench replay``, replays.json): τ at T = 0 of
drafter settings along a run's vanilla output, untimed, and their paired per-question differences."""

from __future__ import annotations

from itertools import groupby
from typing import Sequence

from .blocks import DASH, Section, Table, Text, num
from .measured import PAIRED_RESAMPLES, paired_row
from coral_bench.rundir.reader import ReplayedTau, Run

MAX_PAIRED = 6  # replays of one tree compared pairwise (15 pairs); larger sweeps: scripts/router_table.py


def _mean_question_tau(r: ReplayedTau) -> str:
    taus = r.question_taus.values()
    return num(sum(taus) / len(taus)) if taus else DASH


def replayed(runs: Sequence[Run]) -> Section | None:
    """None when no run has replays.json."""
    multi = len(runs) > 1
    rows, paired, skipped = [], [], []
    for run in runs:
        prefix = (run.label,) if multi else ()
        rows += [prefix + (r.label, r.drafter, r.tree, str(r.samples), str(r.cycles), num(r.tau_pooled, 3),
                           _mean_question_tau(r), r.weights_sha256[:12] if r.weights_sha256 else DASH)
                 for r in run.replays]
        by_tree = sorted(run.replays, key=lambda r: r.tree)
        for tree, group in groupby(by_tree, key=lambda r: r.tree):
            group = list(group)
            if len(group) > MAX_PAIRED:
                skipped.append(f"{run.label}: {len(group)} replays of {tree}")
                continue
            taus = {r.label: r.question_taus for r in group}
            paired += [prefix + (tree,) + paired_row(a.label, b.label, taus)
                       for i, a in enumerate(group) for b in group[:i]]
    if not rows:
        return None
    columns = (("run",) if multi else ()) + ("replay", "drafter", "tree", "samples", "cycles", "τ pooled",
                                             "τ per question", "weights sha256")
    blocks: list = [Table(columns, tuple(rows)),
                    Text("`coral-bench replay RUN --drafter …`: the drafter runs along vanilla's recorded greedy "
                         "output with the target's features, so τ at T = 0 is exact without timing anything; no "
                         "speedup is measured here.", "note")]
    if paired:
        pcols = (("run",) if multi else ()) + ("tree", "a", "b", "τ a", "τ b", "a − b", "95% CI",
                                               "questions paired", "verdict")
        blocks += [Table(pcols, tuple(paired)),
                   Text(f"Replays of the same tree, later against earlier: per-question τ (turns pooled), 95% CI "
                        f"of {PAIRED_RESAMPLES} paired-bootstrap resamples, as in the timed comparison.", "note")]
    if skipped:
        blocks.append(Text(f"Not paired (more than {MAX_PAIRED} replays of one tree): " + "; ".join(skipped) + ".",
                           "note"))
    return Section("replayed", "Replayed acceptance (T = 0, untimed)", tuple(blocks))
