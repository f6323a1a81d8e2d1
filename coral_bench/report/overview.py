"""Report sections around the measurements: the runs and their warnings, what is missing,
the published reference numbers and the provenance footer."""

from __future__ import annotations

from typing import Any, Sequence

from .blocks import DASH, Bullets, Section, Table, Text, num
from .model import TV_SHAPE, tv_points
from .published import PUBLISHED
from coral_bench.rundir.reader import Run


def title(runs: Sequence[Run]) -> str:
    if len(runs) == 1:
        c = runs[0].config
        return f"coral-bench report: {runs[0].name} ({c.get('suite', DASH)}, {c.get('target', DASH)}, " \
               f"{c.get('dtype', DASH)}, {c.get('device', DASH)})"
    return f"coral-bench report: {len(runs)} runs"


def subtitle(runs: Sequence[Run]) -> str:
    dates = sorted({str(r.provenance.get("date", DASH))[:10] for r in runs})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return (f"Measured on this machine, rendered from the result files of {len(runs)} run"
            f"{'s' if len(runs) > 1 else ''} dated {when}. Published GPU numbers are in a separate table.")


def _device(run: Run) -> str:
    p = run.provenance
    extra = ", ".join(str(x) for x in (p.get("device_name"), p.get("cpu_capability")) if x)
    return f"{p.get('device', run.config.get('device', DASH))}" + (f" ({extra})" if extra else "")


def _temperature(run: Run) -> str:
    return DASH if run.temperature is None else f"{run.temperature:g}"


def runs_section(runs: Sequence[Run]) -> Section:
    columns = ("run", "directory", "suite", "questions", "samples per method", "target", "dtype", "device", "threads",
               "max new tokens", "T", "date")
    rows = tuple((r.label, r.name, str(r.config.get("suite", DASH)), str(r.baseline.questions),
                  str(r.baseline.samples), str(r.config.get("target", DASH)),
                  str(r.config.get("dtype", DASH)), _device(r), str(r.config.get("threads", DASH)),
                  str(r.config.get("max_new_tokens", DASH)), _temperature(r), str(r.provenance.get("date", DASH)))
                 for r in runs)
    blocks: list = [Table(columns, rows)]
    blocks += [Text(w, "warning") for w in warnings(runs)]
    return Section("runs", "Runs", tuple(blocks))


def warnings(runs: Sequence[Run]) -> list[str]:
    """What makes numbers untrustworthy or the comparison empty, one line each."""
    out = []
    for r in runs:
        p = r.provenance
        if p.get("busy_machine"):
            out.append(f"run {r.label} ({r.name}): the machine was busy (load average {p.get('load_average_before')} "
                       f"→ {p.get('load_average_after')} on {p.get('threads', DASH)} threads): timings are not "
                       "trustworthy.")
        if r.vanilla_over_hf is not None and r.vanilla_over_hf < 0.95:
            out.append(f"run {r.label} ({r.name}): vanilla reaches {r.vanilla_over_hf:.2f}× hf-vanilla's tokens/s "
                       "(goal ≥ 0.95): a slow baseline inflates every speedup.")
        if not r.drafters:
            out.append(f"run {r.label} ({r.name}) has no drafters: only vanilla and peers were timed, so there is no "
                       "speculative decoding to report (rerun with --drafter).")
        for m in r.drafters:
            if m.equality and m.equality.divergent:
                out.append(f"run {r.label}: {m.label} diverges from vanilla on {m.equality.divergent} sample(s) "
                           f"beyond the numerical noise ({m.equality.rule}): a bug, or a margin to look at.")
    return out


def missing(runs: Sequence[Run]) -> Section | None:
    """What the runs do not contain, so that an absent section is explained, not silent."""
    items = []
    if not any(m.speedup_predicted is not None for r in runs for m in r.methods):
        items.append("Predicted speedup (`speedup_predicted`): not estimated for these runs, so there is no "
                     "predicted-vs-measured figure.")
    if not any(m.lm_head_share is not None or m.lm_head_total_share is not None for r in runs for m in r.drafters):
        items.append("LM-head shares (`lm_head_share`, `lm_head_total_share`): not measured in these runs.")
    for r in runs:
        if r.profile is None:
            continue
        if tv_points(r.profile) is None:
            items.append(f"run {r.label}: results.json has a `profile` section but no T_V(n) points in a known "
                         f"shape ({TV_SHAPE}).")
    if not any(r.profile is not None for r in runs):
        items.append("Verification-cost curve T_V(n): no `profile` section in results.json (no profile pass).")
    for r in runs:
        if not r.has_cycles:
            items.append(f"run {r.label}: no cycles.jsonl, so no per-cycle time split.")
        if r.samples_lines is None:
            paired = ", so no paired τ differences between its drafters" if len(r.drafters) > 1 else ""
            items.append(f"run {r.label}: no samples.jsonl{paired}.")
        if not r.drafters:
            items.append(f"run {r.label}: no drafters, so no acceptance, reach or speedup of speculative decoding.")
        if not r.greedy:
            items.append(f"run {r.label}: T = {_temperature(r)}, so equality with vanilla is not checked "
                         "(it is defined for greedy decoding only).")
    if not items:
        return None
    return Section("missing", "Not in these runs", (Bullets(tuple(items)),))


def published() -> Section:
    columns = ("method", "target", "suite", "T", "speedup", "τ", "τ convention", "hardware", "source")
    rows = tuple((p.method, p.target, p.suite, p.temperature, p.speedup, p.tau, p.tau_convention, p.hardware,
                  p.source) for p in PUBLISHED)
    return Section("published", "Published reference numbers (GPU, 7–8B targets; not measured here)", (
        Text("Published GPU numbers for 7–8B targets, from the papers (docs/methods.md §9); some come from secondary "
             "sources, marked so. Compare acceptance (τ), not speedups: hardware and engines differ (EAGLE A100, "
             "HASS H800, CORAL A6000). τ conventions differ too: HASS reports τ per question, EAGLE pooled.",
             "note"),
        Table(columns, rows)))


def _value(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def provenance(runs: Sequence[Run]) -> Section:
    """The footer: one row per fact, one column per run."""
    def load(r: Run) -> str:
        p = r.provenance
        return f"{_value(p.get('load_average_before'))} → {_value(p.get('load_average_after'))}"

    def dtype(r: Run) -> str:
        reason = r.config.get("dtype_reason")
        return _value(r.provenance.get("dtype")) + (f" ({reason})" if reason else "")

    def sampling(r: Run) -> str:
        s = r.config.get("sampling")
        return ", ".join(f"{k} {_value(v)}" for k, v in s.items()) if isinstance(s, dict) and s else DASH

    def weights(r: Run) -> str:  # which trained weights each drafter ran (results from before: –)
        known = [f"{d.label} {d.weights_sha256[:12]}" for d in r.drafters if d.weights_sha256]
        return ", ".join(known) if known else DASH

    facts = (
        ("directory", lambda r: r.name),
        ("coral-bench", lambda r: _value(r.provenance.get("coral_bench_version"))),
        ("git hash", lambda r: _value(r.provenance.get("git_hash"))),
        ("torch", lambda r: _value(r.provenance.get("torch"))),
        ("transformers", lambda r: _value(r.provenance.get("transformers"))),
        ("python", lambda r: _value(r.provenance.get("python"))),
        ("device", _device),
        ("CPU count", lambda r: _value(r.provenance.get("cpu_count"))),
        ("dtype", dtype),
        ("threads", lambda r: _value(r.provenance.get("threads"))),
        ("load average before → after", load),
        ("busy machine", lambda r: _value(r.provenance.get("busy_machine"))),
        ("target", lambda r: f"{_value(r.config.get('target'))} ({_value(r.config.get('target_source'))})"),
        ("suite source", lambda r: _value(r.config.get("suite_source"))),
        ("sampling", sampling),
        ("chat template sha256", lambda r: _value(r.provenance.get("chat_template_sha256"))),
        ("drafter weights sha256", weights),
        ("mean prompt tokens", lambda r: num(r.mean_prompt_tokens, 1)),
        ("results schema", lambda r: str(r.schema_version)),
        ("date", lambda r: _value(r.provenance.get("date"))),
    )
    rows = tuple((name, *(fact(r) for r in runs)) for name, fact in facts)
    commands = Bullets(tuple(f"run {r.label}: `{_value(r.provenance.get('command') or r.config.get('command'))}`"
                             for r in runs))
    return Section("provenance", "Provenance", (Table(("", *(f"run {r.label}" for r in runs)), rows),
                                                Text("Command lines:"), commands))
