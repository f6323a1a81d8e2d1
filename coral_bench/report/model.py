"""Report sections fed by the speedup model and the profile pass (docs/methods.md §6–7).

The fields they read are newer than schema 1's first runs: ``lm_head_share`` /
``lm_head_total_share`` and ``speedup_predicted`` per method, ``profile`` at the top of
results.json. Each section returns None when no run has its data; :func:`tv_points` also tells
a ``profile`` it cannot read from one that is absent, so the report can say which.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from . import figures as fg
from .blocks import DASH, Figure, Section, Table, Text, pct, times
from .measured import method_name
from .published import FR_SPEC_LM_HEAD
from coral_bench.rundir.reader import Run

# Shapes of profile.t_v (alias profile.verification) this report reads:
#   [{"nodes": n, "seconds": t[, "context": c]}, …]  or  {"nodes": [n…], "seconds": [t…]}
TV_SHAPE = "`profile.t_v`: a list of {nodes, seconds[, context]} or {nodes: […], seconds: […]}"


def lm_head(runs: Sequence[Run]) -> Section | None:
    rows = tuple(((r.label,) if len(runs) > 1 else ()) + (m.label, pct(m.lm_head_share), pct(m.lm_head_total_share))
                 for r in runs for m in r.drafters
                 if m.lm_head_share is not None or m.lm_head_total_share is not None)
    if not rows:
        return None
    columns = (("run",) if len(runs) > 1 else ()) + ("drafter", "LM-head share", "LM-head total share")
    note = Text("LM-head share: drafter time in the LM-head matmul ÷ drafter time per cycle; total share also "
                "counts log-softmax and top-k over the vocabulary. A routed head counts its router and the rows "
                "of the selected groups, a frequency subset its rows. From the latency profile, over the run's "
                f"own cycles once the speedup model has run. For scale: {FR_SPEC_LM_HEAD}.", "note")
    return Section("lm-head", "LM-head share of drafting time", (Table(columns, rows), note))


def predicted(runs: Sequence[Run], palette: fg.Palette) -> Section | None:
    multi = len(runs) > 1
    pairs = [(r, m) for r in runs for m in (*r.drafters, *r.peers) if m.speedup_predicted is not None]
    if not pairs:
        return None
    columns = (("run",) if multi else ()) + ("method", "predicted", "measured [95% CI]", "measured ÷ predicted")
    rows, points = [], []
    for run, m in pairs:
        ci = f" [{m.speedup_ci95[0]:.2f}, {m.speedup_ci95[1]:.2f}]" if m.speedup_ci95 else ""
        ratio = m.speedup / m.speedup_predicted if m.speedup is not None and m.speedup_predicted else None
        rows.append(((run.label,) if multi else ()) + (m.label, times(m.speedup_predicted), times(m.speedup) + ci,
                                                        DASH if ratio is None else f"{ratio:.2f}"))
        if m.speedup is not None:
            points.append(fg.Point(method_name(run, m, multi), m.speedup_predicted, m.speedup, m.speedup_ci95,
                                   palette.colour(m.label, m.kind), palette.marker(m.label)))
    blocks: list = [Table(columns, tuple(rows))]
    if points:
        blocks.append(Figure("predicted", "Predicted vs measured speedup; dashed: the identity line",
                             fg.predicted_figure(points)))
    blocks.append(Text("Predictions take latency terms from the separate profile pass and τ from the run "
                       "(docs/methods.md §7); points on the identity line are predicted exactly.", "note"))
    return Section("predicted", "Predicted vs measured speedup", tuple(blocks))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def tv_points(profile: Mapping[str, Any] | None) -> dict[str, list[tuple[int, float]]] | None:
    """T_V(n) points by context label ("" when none): {context: [(nodes, seconds), …]} sorted by nodes.

    None when ``profile`` is None or holds no points in a shape listed in :data:`TV_SHAPE`.
    """
    if not profile:
        return None
    raw = profile.get("t_v", profile.get("verification"))
    rows: list[tuple[str, Any, Any]] = []
    if isinstance(raw, dict) and isinstance(raw.get("nodes"), list) and isinstance(raw.get("seconds"), list):
        rows = [("", n, t) for n, t in zip(raw["nodes"], raw["seconds"])]
    elif isinstance(raw, list):
        rows = [(str(p.get("context", "")), p.get("nodes"), p.get("seconds")) for p in raw if isinstance(p, dict)]
    points: dict[str, list[tuple[int, float]]] = {}
    for context, n, t in rows:
        n, t = _number(n), _number(t)
        if n is not None and t is not None:
            points.setdefault(context, []).append((int(n), t))
    return {k: sorted(v) for k, v in points.items()} or None


def verification_cost(runs: Sequence[Run]) -> Section | None:
    found = [(r, tv_points(r.profile)) for r in runs]
    found = [(r, p) for r, p in found if p]
    if not found:
        return None
    multi = len(runs) > 1
    rows, curves = [], []
    for i, (run, points) in enumerate(found):
        for j, (context, series) in enumerate(sorted(points.items())):
            label = " · ".join(x for x in ((run.label if multi else ""), f"context {context}" if context else "") if x)
            label = label or "T_V(n)"
            rows.extend((label, str(n), f"{t * 1e3:.3f}") for n, t in series)
            k = i * 3 + j
            curves.append(fg.CostCurve(label, tuple(n for n, _ in series), tuple(t * 1e3 for _, t in series),
                                       fg.OKABE_ITO[k % len(fg.OKABE_ITO)], fg.MARKERS[k % len(fg.MARKERS)]))
    note = Text("T_V(n): one target forward over n tree nodes, from the profile pass (micro-benchmarks at the "
                "run's context lengths). Nearly flat in n on a GPU; on a CPU it grows with n.", "note")
    return Section("verification-cost", "Verification cost T_V(n)",
                   (Table(("series", "nodes n", "T_V ms"), tuple(rows)), note,
                    Figure("verification-cost", "Verification cost T_V(n) by tree size",
                           fg.verification_cost_figure(curves))))
