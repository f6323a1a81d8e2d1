"""Report sections about what the runs measured: headline, details, breakdowns, acceptance, time split.

One pure function per section: loaded runs (and the palette) in, a :class:`Section` out.
Definitions follow docs/methods.md §1 and are restated in each section's note.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from coral_bench.metrics.sample_metrics import SAMPLE_METRICS
from coral_bench.metrics.stats import paired_difference
from . import figures as fg
from .blocks import DASH, Figure, Heading, Section, Table, Text, ms, num, pct, times
from coral_bench.rundir.reader import MethodResult, Run

MTBENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


def method_name(run: Run, method: MethodResult, multi: bool) -> str:
    """How a method is named in figures: ``A · oracle`` when several runs share the report."""
    return f"{run.label} · {method.label}" if multi else method.label


def _speedup_cell(m: MethodResult) -> str:
    if m.kind == "baseline":
        return "1.00× (baseline)"
    if m.speedup is not None and m.questions == 1:
        return times(m.speedup) + " (1 question: no CI)"
    ci = f" [{m.speedup_ci95[0]:.2f}, {m.speedup_ci95[1]:.2f}]" if m.speedup_ci95 else ""
    return times(m.speedup) + ci


def _equal_cell(m: MethodResult) -> str:
    if m.kind == "baseline":
        return DASH
    e = m.equality
    if e is None:
        return "not checked (T > 0)"
    return f"{e.identical_to_run}/{e.pairs} ({pct(e.identical_to_run / e.pairs if e.pairs else None)})"


def _judged_cell(m: MethodResult) -> str:
    """identical / numerical / divergent, each output judged on its own prompt (docs/methods.md §4)."""
    e = m.equality
    if m.kind == "baseline" or e is None:
        return DASH
    cell = f"{e.identical} / {e.numerical} / {e.divergent}"
    return cell if e.rule == "measured" else cell + " (tie rule)"


def _method_cell(m: MethodResult) -> str:
    return f"{m.label} (upper bound)" if m.is_oracle else m.label


def headline(runs: Sequence[Run], palette: fg.Palette) -> Section:
    multi = len(runs) > 1
    columns = ("method", "drafter", "tree", "speedup [95% CI]", "predicted", "τ pooled", "τ per question",
               "tokens/s", "equal to vanilla", "identical / numerical / divergent")
    rows = []
    for run in runs:
        for m in run.methods:
            tau = "1.00" if m.kind == "baseline" else num(m.tau_pooled)
            tau_q = "1.00" if m.kind == "baseline" else num(m.tau_per_question)
            row = (_method_cell(m), m.drafter or (m.kind if m.kind != "drafter" else DASH), m.tree or DASH,
                   _speedup_cell(m), times(m.speedup_predicted), tau, tau_q, num(m.tokens_per_s, 1),
                   _equal_cell(m), _judged_cell(m))
            rows.append(((run.label, run.config.get("suite", DASH)) if multi else ()) + row)
    if multi:
        columns = ("run", "suite") + columns
    blocks: list = [Table(columns, tuple(rows))]
    for run in runs:
        bounds = sorted({f"{m.tree or 'peer chain'}: {m.equality.bound:.3g}" for m in (*run.drafters, *run.peers)
                         if m.equality and m.equality.bound is not None})
        if bounds:
            prefix = f"Run {run.label}: " if multi else ""
            blocks.append(Text(f"{prefix}noise bounds ({run.config.get('dtype', DASH)}, |Δ top-2 margin| "
                               f"quantile of noise.json): {'; '.join(bounds)}.", "note"))
    for run in runs:
        if run.vanilla_over_hf is not None:
            prefix = f"Run {run.label}: " if multi else ""
            blocks.append(Text(f"{prefix}vanilla / hf-vanilla tokens/s = {run.vanilla_over_hf:.2f} (goal ≥ 0.95: "
                               "a slow baseline inflates every speedup).", "note"))
    blocks.append(Text(
        "speedup = tokens/s of the method ÷ tokens/s of vanilla on the same prompts, wall time per turn "
        "including prefill; 95% CI: paired bootstrap over questions. predicted: `speedup_predicted` of the "
        "speedup model (– where not estimated). τ pooled = Σ tokens emitted by cycles ÷ Σ cycles (EAGLE / vLLM "
        "convention); τ per question = mean of each question's pooled τ (HASS convention). equal to vanilla: "
        "greedy outputs identical to the run's vanilla samples. identical / numerical / divergent: each output "
        "compared with vanilla greedy decoding of its own prompt (vanilla re-run on the method's own history "
        "for later turns after a divergence); numerical: the first difference falls where vanilla's top-2 "
        "logit margin is within the noise bound measured for this target, dtype and tree shape before the "
        "run; divergent: above it (docs/methods.md §4). \"tie rule\": a run from before the measured bounds, "
        "judged by a fixed tie threshold that also excused every later turn. oracle (upper bound): the target's own greedy continuation, "
        "a perfect and free drafter on this hardware. hf-vanilla: transformers' own `generate`, a peer.", "note"))
    bars = [fg.Bar(method_name(run, m, multi), m.speedup, m.speedup_ci95, m.speedup_predicted,
                   palette.colour(m.label, m.kind)) for run in runs for m in (*run.drafters, *run.peers)]
    blocks.append(Figure("speedup", "Measured speedup over vanilla with 95% paired-bootstrap CIs"
                         + ("; diamonds: predicted" if any(b.predicted for b in bars) else ""),
                         fg.speedup_figure(bars)))
    if multi:
        blocks.extend(_side_by_side(runs))
    return Section("headline", "Headline: speedup and acceptance", tuple(blocks))


def _side_by_side(runs: Sequence[Run]) -> list:
    labels: list[str] = []
    for run in runs:
        labels += [m.label for m in (*run.drafters, *run.peers) if m.label not in labels]
    columns = ("method",) + tuple(f"{r.label}: {r.config.get('suite', DASH)}, {r.config.get('dtype', DASH)}, "
                                  f"{r.config.get('device', DASH)}" for r in runs)
    rows = []
    for label in labels:
        cells = []
        for run in runs:
            m = next((m for m in (*run.drafters, *run.peers) if m.label == label), None)
            cells.append(DASH if m is None else f"{times(m.speedup)} · τ {num(m.tau_pooled)} · {m.tree or DASH}")
        rows.append((label, *cells))
    return [Heading("Runs side by side"),
            Table(columns, tuple(rows), "speedup · τ pooled · tree, one column per run")]


def details(runs: Sequence[Run]) -> Section:
    multi = len(runs) > 1
    columns = ("method", "samples", "new tokens", "wall s", "prefill s", "speedup (decode only)",
               "speedup (per prompt)", "hit max_new_tokens", "repetition", "drafter parameters")
    rows = []
    for run in runs:
        for m in run.methods:
            base = m.kind == "baseline"
            rows.append(((run.label,) if multi else ()) + (
                m.label, str(m.samples), str(m.new_tokens), num(m.wall_s, 3), num(m.prefill_s, 3),
                "1.00×" if base else times(m.speedup_decode), "1.00×" if base else times(m.speedup_per_prompt),
                pct(m.frac_max_new_tokens), num(m.repetition_rate), DASH if m.parameters is None else f"{m.parameters:,}"))
    if multi:
        columns = ("run",) + columns
    note = Text("speedup (decode only) leaves prefill time out; speedup (per prompt) is the EAGLE / Spec-Bench "
                "ratio of per-question mean tokens/s. hit max_new_tokens: fraction of samples stopped by the "
                "limit; repetition: mean share of repeated 4-grams in the output (small models loop).", "note")
    return Section("details", "Details per method", (Table(columns, tuple(rows)), note))


def sample_metrics(runs: Sequence[Run]) -> Section | None:
    """Every registered per-sample metric (metrics/sample_metrics.py) the runs recorded; None for runs made
    before the metrics were recorded."""
    names = [n for n in SAMPLE_METRICS if any(n in m.sample_metrics for run in runs for m in run.methods)]
    if not names:
        return None
    multi = len(runs) > 1
    rows = []
    for run in runs:
        for m in run.methods:
            cells = tuple(_metric_cell(m.sample_metrics.get(n), SAMPLE_METRICS[n].unit) for n in names)
            rows.append(((run.label,) if multi else ()) + (m.label,) + cells)
    columns = (("run",) if multi else ()) + ("method",) + tuple(names)
    note = Text("; ".join(f"{n}: {SAMPLE_METRICS[n].description}" for n in names) + ".", "note")
    return Section("sample-metrics", "Per-sample metrics", (Table(columns, tuple(rows)), note))


def _metric_cell(value: float | None, unit: str) -> str:
    if unit == "fraction":
        return pct(value)
    return num(value, 3 if unit == "s" else 1)


def _ordered(names: set[str]) -> list[str]:
    known = [c for c in MTBENCH_CATEGORIES if c in names]
    return known + sorted(names - set(known))


def _breakdown(run: Run, kind: str) -> Table:
    """Rows: categories (or turns); per drafter τ pooled and the pooled tokens/s ratio to vanilla."""
    groups = run.baseline.by_category if kind == "category" else run.baseline.by_turn
    names = _ordered({g.name for g in groups}) if kind == "category" else sorted((g.name for g in groups), key=int)
    columns = [kind, "samples", "vanilla tokens/s"]
    for d in run.drafters:
        columns += [f"{d.label} τ", f"{d.label} speedup"]
    rows = []
    for name in names:
        pick = (lambda m: m.category(name)) if kind == "category" else (lambda m: m.turn(name))
        base = pick(run.baseline)
        cells = [name if kind == "category" else f"turn {int(name) + 1}", str(base.samples), num(base.tokens_per_s, 1)]
        for d in run.drafters:
            g = pick(d)
            ratio = g.tokens_per_s / base.tokens_per_s if g and g.tokens_per_s and base.tokens_per_s else None
            cells += [num(g.tau_pooled) if g else DASH, times(ratio)]
        rows.append(tuple(cells))
    return Table(tuple(columns), tuple(rows))


def categories(runs: Sequence[Run]) -> Section:
    blocks: list = []
    for run in runs:
        if len(runs) > 1:
            blocks.append(Heading(f"Run {run.label}: {run.name}"))
        blocks.append(_breakdown(run, "category"))
    blocks.append(Text("speedup per category: the method's pooled tokens/s over the category's samples ÷ "
                       "vanilla's over the same samples (no CI; few questions per category).", "note"))
    return Section("categories", "Per category", tuple(blocks))


def turns(runs: Sequence[Run]) -> Section:
    blocks: list = []
    for run in runs:
        if len(runs) > 1:
            blocks.append(Heading(f"Run {run.label}: {run.name}"))
        blocks.append(_breakdown(run, "turn"))
    blocks.append(Text("Turn 2 is asked after the method's own turn-1 answer (EAGLE convention).", "note"))
    return Section("turns", "Per turn", tuple(blocks))


def _reach_cell(m: MethodResult, d: int) -> str:
    if d >= len(m.reach_by_depth):
        return DASH
    return f"{m.reach_by_depth[d]:.2f} ({m.reach_conditional[d]:.2f})" if d < len(m.reach_conditional) \
        else f"{m.reach_by_depth[d]:.2f}"


def acceptance(runs: Sequence[Run], palette: fg.Palette) -> Section:
    multi = len(runs) > 1
    depth = max((len(m.reach_by_depth) for r in runs for m in r.drafters), default=0)
    columns = (("run",) if multi else ()) + ("method", "cycles", "τ pooled", "τ before cut") + tuple(
        f"reach_{d}" for d in range(1, depth + 1))
    rows = tuple(((r.label,) if multi else ()) + (m.label, str(m.cycles), num(m.tau_pooled), num(m.tau_uncut))
                 + tuple(_reach_cell(m, d) for d in range(depth)) for r in runs for m in r.drafters)
    reach_panels, hist_panels = [], []
    for run in runs:
        title = f"{run.label} · {run.config.get('suite', DASH)}" if multi else str(run.config.get("suite", ""))
        reach_panels.append(fg.Panel(title, tuple(fg.Curve(m.label, m.reach_by_depth, palette.colour(m.label),
                                                           palette.marker(m.label)) for m in run.drafters)))
        hist_panels.append(fg.Panel(title, tuple(
            fg.Curve(m.label, tuple(c / m.cycles for c in m.accept_histogram) if m.cycles else (),
                     palette.colour(m.label), palette.marker(m.label)) for m in run.drafters)))
    note = Text("reach_d: fraction of cycles whose accepted path reaches depth ≥ d; in parentheses the "
                "conditional rate reach_d / reach_(d−1). Identity: τ before the cut at EOS / max_new_tokens "
                "= 1 + Σ reach_d.", "note")
    blocks = [Table(columns, rows) if rows else Text("No drafters in these runs: nothing was drafted."), note,
              Figure("reach", "Reach by depth, per drafter", fg.reach_figure(reach_panels)),
              Figure("accepted", "Accepted draft tokens per cycle (fraction of each drafter's cycles)",
                     fg.accepted_figure(hist_panels))]
    return Section("acceptance", "Acceptance: reach by depth and accepted per cycle", tuple(blocks))


PAIRED_SEED = 0  # fixed, so that a re-render draws the same bootstrap resamples
PAIRED_RESAMPLES = 2000


def paired_row(a: str, b: str, taus: Mapping[str, Mapping[str, float]]) -> tuple[str, ...]:
    """Drafter a against drafter b: their τ over the questions both have, a − b with its CI, the verdict."""
    tau_a, tau_b = taus.get(a, {}), taus.get(b, {})
    common = sorted(tau_a.keys() & tau_b.keys())
    if not common:
        return (a, b, DASH, DASH, DASH, DASH, "0", "no question in common")
    mean, low, high = paired_difference(tau_a, tau_b, seed=PAIRED_SEED, resamples=PAIRED_RESAMPLES)
    means = tuple(math.fsum(t[q] for q in common) / len(common) for t in (tau_a, tau_b))
    if len(common) == 1:
        ci, verdict = DASH, "1 question: no CI"
    else:
        ci = f"[{low:+.3f}, {high:+.3f}]"
        verdict = f"{a} > {b}" if low > 0 else f"{a} < {b}" if high < 0 else "no clear difference"
    return (a, b, num(means[0]), num(means[1]), f"{mean:+.3f}", ci, str(len(common)), verdict)


def paired_tau(runs: Sequence[Run]) -> Section | None:
    """Every later drafter against every earlier one of the same run, question by question; None
    when no run with samples.jsonl has two drafters."""
    multi = len(runs) > 1
    rows = tuple(((run.label,) if multi else ()) + paired_row(a.label, b.label, run.question_taus)
                 for run in runs if run.samples_lines is not None
                 for i, a in enumerate(run.drafters) for b in run.drafters[:i])
    if not rows:
        return None
    columns = (("run",) if multi else ()) + ("a", "b", "τ a", "τ b", "a − b", "95% CI", "questions paired",
                                             "verdict")
    note = Text("Each question's τ pools its turns (τ per question, HASS convention). a − b: the mean, over the "
                "questions both drafters have a τ for, of the question's τ under a minus its τ under b; τ a and "
                f"τ b are means over the same questions. 95% CI: percentile interval of {PAIRED_RESAMPLES} "
                f"paired-bootstrap resamples of the questions (seed {PAIRED_SEED}). Verdict: a > b when the CI lies "
                "above 0, a < b when below, otherwise no clear difference.", "note")
    return Section("paired-tau", "Paired τ differences between drafters (per question, 95% paired-bootstrap CI)",
                   (Table(columns, rows), note))


def time_split(runs: Sequence[Run]) -> Section:
    multi = len(runs) > 1
    columns = (("run",) if multi else ()) + ("method", "cycles", "drafting ms", "target scoring ms",
                                             "verifying ms", "committing ms", "total ms / cycle",
                                             "ms / emitted token")
    rows, bars = [], []
    for run in runs:
        for m in run.methods:
            s = run.split(m.label)
            if s is None:
                continue
            rows.append(((run.label,) if multi else ()) + (
                m.label, str(s.cycles), ms(s.draft_s, 3), ms(s.score_s, 3), ms(s.verify_s, 3), ms(s.commit_s, 3),
                ms(s.total_s, 3), ms(s.per_token_s, 3)))
            bars.append(fg.SplitBar(method_name(run, m, multi),
                                    (s.draft_s * 1e3, s.score_s * 1e3, s.verify_s * 1e3, s.commit_s * 1e3)))
    blocks: list = [Table(columns, tuple(rows)) if rows else Text("No cycle records (cycles.jsonl) in these runs.")]
    blocks.append(Text("Means over cycles.jsonl: drafting (drafter forwards and tree building), target scoring "
                       "(one target forward over the tree), verifying, committing (target and drafter caches). "
                       "ms / emitted token = Σ cycle time ÷ Σ tokens emitted by cycles; prefill is not a cycle.",
                       "note"))
    blocks.append(Figure("time-split", "Per-cycle time split: drafting, target scoring, verifying, committing",
                         fg.time_split_figure(bars)))
    return Section("time-split", "Where the time goes: per-cycle split", tuple(blocks))
