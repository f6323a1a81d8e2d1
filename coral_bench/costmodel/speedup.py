"""The speedup model of docs/methods.md §7: coral-bench's own cost model (CORAL's equation is not public).

Pure maths, no torch. Latency terms come from the separate profile pass (``profile.json``),
acceptance from the run (``samples.jsonl`` / ``cycles.jsonl``) or from replay; no term is fitted on
the run it predicts (docs/methods.md §7: a residual fitted on the same run makes prediction = measurement).

Per sample s with prompt P_s, N_s new tokens and cycles c = 1 … C_s::

    T_van(s)  = T_pf(P_s) + Σ_{i=1}^{N_s−1} T_cycle,van(ctx_i)
    T_spec(s) = T_pf(P_s) + T_dpf(P_s) + Σ_c T_cycle(c)
    T_cycle   = [T_body(L_{c−1}+1 rows) + T_head(1) + T_sm(1)]          first drafter forward (no body in cycle 1:
              + Σ_{d=2}^{D} [T_body(w_d) + T_head(w_d) + T_sm(w_d)]        the drafter prefill ran those slots)
              + T_tree                                                   rerank and tree bookkeeping
              + T_V(n_c, ctx_c) + T_verify + T_commit + T_py
    SR = (Σ N_spec / Σ T_spec) / (Σ N_van / Σ T_van);   SR_∞ = τ_pooled · T_AR / mean T_cycle

ctx_c is the target's committed length before cycle c: P + tokens emitted by earlier cycles. T_tree,
T_verify, T_commit and T_py come from the no-op decode loop of the profile pass (never a residual).

Other drafters (``draft_times``): oracles and model-free drafters have no forward terms (their drafting
is the no-op loop's T_tree, running their real code); ``early-exit:N`` replaces the forwards by K steps
of the target's first N layers + head (``draft_costs.EarlyExitCosts``); routed and subset heads replace
T_head(w) + T_sm(w) by T_router(w) + T_head(U rows, w) + T_sm(U, w), U from the recorded
|∪ selected groups| per forward (``draft_costs.HeadRowCosts``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping, Sequence

from coral_bench.costmodel.curves import Curve, Grid, curve as _curve, curve_json as _curve_json, grid as _grid, grid_json as _grid_json
from coral_bench.costmodel.draft_costs import EarlyExitCosts, HeadRowCosts
from coral_bench.core.records import SampleRecord
from coral_bench.rundir.layout import VANILLA


# ---------------------------------------------------------------------------------------------
# latency terms


@dataclass(frozen=True)
class LoopCosts:
    """Per-cycle seconds outside model forwards, from the no-op decode loop (docs/methods.md §7)."""

    tree_s: float  # drafting besides forwards: top-k bookkeeping, rerank, tree building, n-gram matching
    verify_s: float
    commit_s: float  # target cache compaction + drafter commit
    loop_s: float  # T_py: the loop's own time between the timed stages
    score_call_s: float  # the no-op target call (mask, positions, cache append): inside T_V, shown only
    cycles: int

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "LoopCosts":
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class ForwardCosts:
    """A model drafter's forward costs for one tree shape (EAGLE-style; docs/methods.md §2–3)."""

    first_body: Grid  # T_body(L+1 rows, ctx): fc + layer (+ embedding, RoPE) of a cycle's first forward
    expand_body: Grid  # T_body(w rows, ctx): an expansion over the frontier
    head: Curve  # T_head(rows): the LM-head matmul
    softmax_topk: Curve  # T_sm(rows): log-softmax + top-k over the vocabulary (with the logits' fp32 cast)
    prefill: Curve  # T_dpf(P): the drafter's slots over the prompt
    widths: tuple[int, ...]  # [D − 1] frontier width of each expansion

    @property
    def forwards(self) -> int:
        """D: sequential drafter forwards per tree (docs/methods.md §1)."""
        return 1 + len(self.widths)

    def to_json(self) -> dict:
        return {"first_body": _grid_json(self.first_body), "expand_body": _grid_json(self.expand_body),
                "head": _curve_json(self.head, "rows"), "softmax_topk": _curve_json(self.softmax_topk, "rows"),
                "prefill": _curve_json(self.prefill, "prompt_tokens"), "widths": list(self.widths)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ForwardCosts":
        return cls(_grid(data["first_body"]), _grid(data["expand_body"]), _curve(data["head"], "rows"),
                   _curve(data["softmax_topk"], "rows"), _curve(data["prefill"], "prompt_tokens"),
                   tuple(data["widths"]))


@dataclass(frozen=True)
class DrafterCosts:
    """Everything the model needs about one drafter and tree: forwards (None: model-free, oracle or early
    exit) and loop costs; ``early_exit`` replaces the forwards for ``early-exit:N``; ``head_rows`` replaces the
    full LM head (``forward.head`` / ``forward.softmax_topk``) for routed and subset heads (draft_costs)."""

    forward: ForwardCosts | None
    loop: LoopCosts
    early_exit: EarlyExitCosts | None = None
    head_rows: HeadRowCosts | None = None


@dataclass(frozen=True)
class TargetCosts:
    t_v: Grid  # T_V(n, ctx): one target forward over n tree nodes (Target.score) at context ctx
    prefill: Curve  # T_pf(P): target prefill + first token

    def to_json(self) -> dict:
        return {"t_v": [{"nodes": n, "context": c, "seconds": s} for n, c, s in self.t_v.points()],
                "t_pf": _curve_json(self.prefill, "prompt_tokens")}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TargetCosts":
        t_v = Grid.from_points((p["nodes"], p["context"], p["seconds"]) for p in data["t_v"])
        return cls(t_v, _curve(data["t_pf"], "prompt_tokens"))


# ---------------------------------------------------------------------------------------------
# acceptance: what the run (or replay) did


@dataclass(frozen=True)
class CycleShape:
    """One cycle as the model sees it."""

    nodes: int  # n_c, tree nodes verified (root included)
    accepted: float  # L_c (E[accepted] for replay at T > 0)
    emitted: float  # tokens the cycle emitted (accepted + 1 unless cut)
    context: float  # ctx_c: committed target length before the cycle
    prev_rows: float | None  # L_{c−1} + 1 slots for the first drafter forward; None in a sample's first cycle
    head_union: tuple[int, ...] = ()  # [≤ D] |∪ selected router groups| per drafter forward (routed heads)


@dataclass(frozen=True)
class SampleShape:
    question_id: str
    turn: int
    prompt_tokens: int
    new_tokens: int
    cycles: tuple[CycleShape, ...]

    @property
    def key(self) -> tuple[str, int]:
        return (self.question_id, self.turn)


def shape_cycles(prompt_tokens: int, nodes: Sequence[int], accepted: Sequence[float],
                 emitted: Sequence[float], unions: Sequence[Sequence[int]] | None = None) -> tuple[CycleShape, ...]:
    """Cycles with their contexts: ctx_c = P + Σ_{c' < c} emitted_c' (docs/methods.md §2 bookkeeping); ``unions``:
    the recorded |∪ router groups| per forward of each cycle (routed heads), else none."""
    unions = unions if unions is not None else [()] * len(nodes)
    out, ctx, prev = [], float(prompt_tokens), None
    for n, a, e, u in zip(nodes, accepted, emitted, unions, strict=True):
        out.append(CycleShape(int(n), float(a), float(e), ctx, prev, tuple(int(x) for x in u)))
        ctx, prev = ctx + e, a + 1
    return tuple(out)


def sample_shapes(samples: Sequence[SampleRecord], cycle_rows: Sequence[Mapping[str, Any]],
                  default_nodes: int) -> list[SampleShape]:
    """The run's samples of one method as model inputs; nodes per cycle from ``cycles.jsonl`` rows of that
    method (``default_nodes`` where a sample has none, e.g. vanilla's one-node trees)."""
    by_key: dict[tuple[str, int], dict[int, Mapping[str, Any]]] = {}
    for row in cycle_rows:
        by_key.setdefault((row["question_id"], row["turn"]), {})[row["cycle"]] = row
    shapes = []
    for s in samples:
        rows = by_key.get((s.question_id, s.turn), {})
        nodes = [rows[i]["nodes"] if i in rows else default_nodes for i in range(s.cycles)]
        unions = [rows[i].get("head_union") or () if i in rows else () for i in range(s.cycles)]
        emitted = _emitted(s)
        shapes.append(SampleShape(s.question_id, s.turn, s.prompt_tokens, s.new_tokens,
                                  shape_cycles(s.prompt_tokens, nodes, s.accepted, emitted, unions)))
    return shapes


def _emitted(s: SampleRecord) -> list[int]:
    """accepted + 1 per cycle, the last cut so that the cycles emit exactly new_tokens − 1 (docs/methods.md §1)."""
    if not s.cycles:
        return []
    full = [a + 1 for a in s.accepted]
    full[-1] -= sum(full) - (s.new_tokens - 1)
    return full


# ---------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class StageTimes:
    """Seconds by stage (of one cycle, a mean cycle, or summed)."""

    body: float = 0.0  # drafter fc + layer over all forwards
    head: float = 0.0  # drafter LM-head matmul
    softmax_topk: float = 0.0
    tree: float = 0.0  # rerank and tree bookkeeping (no-op loop)
    score: float = 0.0  # T_V(n, ctx)
    verify: float = 0.0
    commit: float = 0.0
    loop: float = 0.0  # T_py

    @property
    def draft(self) -> float:
        return self.body + self.head + self.softmax_topk + self.tree

    @property
    def total(self) -> float:
        return self.draft + self.score + self.verify + self.commit + self.loop

    def plus(self, other: "StageTimes") -> "StageTimes":
        return StageTimes(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def times(self, k: float) -> "StageTimes":
        return StageTimes(*(getattr(self, f.name) * k for f in fields(self)))

    def to_json(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "draft": self.draft, "total": self.total}


def forward_times(f: ForwardCosts, prev_rows: float | None, context: float, head_rows: HeadRowCosts | None = None,
                  unions: Sequence[int] = ()) -> tuple[float, float, float]:
    """(body, head, softmax_topk) seconds of one cycle's D drafter forwards: the first over ``prev_rows`` =
    L_{c−1} + 1 slots (None: a sample's first cycle, whose slots the drafter prefill ran), then the expansions.
    With ``head_rows`` (routed / subset head) the head terms follow the rows computed, ``unions`` per forward."""
    body = f.first_body.at(prev_rows, context) if prev_rows is not None else 0.0
    for w in f.widths:
        body += f.expand_body.at(w, context)
    if head_rows is not None:
        head, sm = head_rows.cycle((1, *f.widths), unions)
        return body, head, sm
    head, sm = f.head.at(1), f.softmax_topk.at(1)
    for w in f.widths:
        head += f.head.at(w)
        sm += f.softmax_topk.at(w)
    return body, head, sm


def draft_times(c: CycleShape, drafter: DrafterCosts) -> tuple[float, float, float]:
    """(body, head, softmax_topk) of one cycle's drafting forwards, whatever the drafter (0 for model-free
    drafters and oracles, whose drafting is all in the no-op loop's ``tree_s``)."""
    if drafter.early_exit is not None:
        body, head = drafter.early_exit.cycle(c.context)
        return body, head, 0.0  # argmax / top-k of the early-exit step is in its measured glue
    if drafter.forward is not None:
        return forward_times(drafter.forward, c.prev_rows, c.context, drafter.head_rows, c.head_union)
    return 0.0, 0.0, 0.0


def cycle_time(c: CycleShape, target: TargetCosts, drafter: DrafterCosts) -> StageTimes:
    """T_cycle of docs/methods.md §7 for one cycle."""
    body, head, sm = draft_times(c, drafter)
    loop = drafter.loop
    return StageTimes(body, head, sm, loop.tree_s, target.t_v.at(c.nodes, c.context), loop.verify_s,
                      loop.commit_s, loop.loop_s)


@dataclass(frozen=True)
class SampleTime:
    prefill: float  # T_pf(P)
    drafter_prefill: float  # T_dpf(P)
    cycles: StageTimes  # Σ over the sample's cycles
    count: float  # cycles (scaled, see sample_time)

    @property
    def total(self) -> float:
        return self.prefill + self.drafter_prefill + self.cycles.total


def sample_time(s: SampleShape, target: TargetCosts, drafter: DrafterCosts) -> SampleTime:
    """T_spec(s) (T_van(s) for vanilla, which has no forward costs). Where the cycles' emitted tokens do not
    add up to N − 1 (replay at T > 0 uses E[accepted]), the cycle sum is scaled to the tokens needed."""
    f = drafter.forward
    dpf = f.prefill.at(s.prompt_tokens) if f is not None and s.cycles else 0.0
    total = StageTimes()
    for c in s.cycles:
        total = total.plus(cycle_time(c, target, drafter))
    emitted = sum(c.emitted for c in s.cycles)
    scale = (s.new_tokens - 1) / emitted if emitted > 0 else 1.0
    return SampleTime(target.prefill.at(s.prompt_tokens), dpf, total.times(scale), len(s.cycles) * scale)


@dataclass(frozen=True)
class Leviathan:
    """Leviathan et al.'s chain form E/(γc + 1), E = (1 − α^{γ+1})/(1 − α), for reference: it assumes
    i.i.d. acceptance α and T_V(γ + 1) = T_AR. α is the rate whose E equals the measured τ."""

    alpha: float
    gamma: float  # drafter forwards per cycle
    c: float  # one drafter forward ÷ one vanilla step
    value: float


def leviathan(tau: float, gamma: float, c: float) -> Leviathan:
    lo, hi = 0.0, 1.0
    target = min(max(tau, 1.0), gamma + 1.0)
    for _ in range(100):  # E(α) increases from 1 (α = 0) to γ + 1 (α = 1): bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if chain_expected(mid, gamma) < target else (lo, mid)
    alpha = (lo + hi) / 2
    return Leviathan(alpha, gamma, c, chain_expected(alpha, gamma) / (gamma * c + 1.0))


def chain_expected(alpha: float, gamma: float) -> float:
    """E = (1 − α^{γ+1}) / (1 − α): expected tokens per cycle of a γ-chain (Leviathan et al. 2023)."""
    return gamma + 1.0 if alpha >= 1.0 else (1.0 - alpha ** (gamma + 1.0)) / (1.0 - alpha)


@dataclass(frozen=True)
class Prediction:
    """Predicted speedups over the (question, turn) pairs present on both sides, as stats.compare pairs them."""

    pairs: int
    speedup: float | None  # (Σ N / Σ T_spec) ÷ (Σ N / Σ T_van), prefill included
    speedup_decode: float | None  # the same without T_pf (T_dpf stays: the run's prefill_s excludes it too)
    tau: float | None  # pooled over the cycles used
    cycles: float
    per_cycle: StageTimes  # mean predicted cycle
    vanilla_per_cycle: StageTimes
    prefill_s: float  # Σ T_pf over the speculative samples
    drafter_prefill_s: float  # Σ T_dpf
    sr_infinity: float | None  # τ · T_AR / mean T_cycle
    leviathan: Leviathan | None

    def to_json(self) -> dict:
        lev = self.leviathan
        return {"pairs": self.pairs, "speedup_predicted": self.speedup, "speedup_decode_predicted": self.speedup_decode,
                "tau": self.tau, "cycles": self.cycles, "per_cycle_s": self.per_cycle.to_json(),
                "vanilla_per_cycle_s": self.vanilla_per_cycle.to_json(), "prefill_s": self.prefill_s,
                "drafter_prefill_s": self.drafter_prefill_s, "sr_infinity": self.sr_infinity,
                "leviathan": None if lev is None else {"alpha": lev.alpha, "gamma": lev.gamma, "c": lev.c,
                                                       "value": lev.value}}


def predict(spec: Sequence[SampleShape], vanilla: Sequence[SampleShape], target: TargetCosts,
            drafter: DrafterCosts, vanilla_costs: DrafterCosts) -> Prediction:
    """Predicted speedups of ``spec`` over ``vanilla`` (docs/methods.md §7), paired by (question, turn)."""
    van_by_key = {s.key: s for s in vanilla}
    pairs = [(s, van_by_key[s.key]) for s in spec if s.key in van_by_key]
    st = [sample_time(s, target, drafter) for s, _ in pairs]
    vt = [sample_time(v, target, vanilla_costs) for _, v in pairs]
    tok_s, tok_v = sum(s.new_tokens for s, _ in pairs), sum(v.new_tokens for _, v in pairs)
    spec_cycles, van_cycles = _sum(t.cycles for t in st), _sum(t.cycles for t in vt)
    n_spec, n_van = sum(t.count for t in st), sum(t.count for t in vt)
    pf, dpf = sum(t.prefill for t in st), sum(t.drafter_prefill for t in st)
    van_pf = sum(t.prefill for t in vt)
    per_cycle = spec_cycles.times(1 / n_spec) if n_spec else StageTimes()
    van_cycle = van_cycles.times(1 / n_van) if n_van else StageTimes()
    emitted = sum(c.emitted for s, _ in pairs for c in s.cycles)
    cycles = sum(len(s.cycles) for s, _ in pairs)
    tau = emitted / cycles if cycles else None
    sr_inf = tau * van_cycle.total / per_cycle.total if tau and per_cycle.total else None
    lev = None
    gamma = (drafter.early_exit.steps if drafter.early_exit is not None
             else drafter.forward.forwards if drafter.forward is not None else 0)
    if tau and gamma and van_cycle.total:
        c = (per_cycle.body + per_cycle.head + per_cycle.softmax_topk) / gamma / van_cycle.total
        lev = leviathan(tau, gamma, c)
    return Prediction(
        pairs=len(pairs),
        speedup=_ratio(tok_s, pf + dpf + spec_cycles.total, tok_v, van_pf + van_cycles.total),
        speedup_decode=_ratio(tok_s, dpf + spec_cycles.total, tok_v, van_cycles.total),
        tau=tau, cycles=n_spec, per_cycle=per_cycle, vanilla_per_cycle=van_cycle, prefill_s=pf,
        drafter_prefill_s=dpf, sr_infinity=sr_inf, leviathan=lev)


def _sum(items: Iterable[StageTimes]) -> StageTimes:
    total = StageTimes()
    for t in items:
        total = total.plus(t)
    return total


def _ratio(tok_s: float, t_s: float, tok_v: float, t_v: float) -> float | None:
    if t_s <= 0 or t_v <= 0 or tok_v <= 0:
        return None
    return (tok_s / t_s) / (tok_v / t_v)


def lm_head_shares(costs: ForwardCosts, tree_s: float, first_rows: float, context: float,
                   head_rows: HeadRowCosts | None = None) -> tuple[float, float]:
    """(lm_head_share, lm_head_total_share) of one cycle's drafting time (docs/methods.md §1): LM-head matmul
    ÷ drafter time per cycle, and the same with log-softmax + top-k. ``first_rows`` = L + 1 of the first
    forward (1 where no run says otherwise); drafter time = forwards + ``tree_s`` (rerank, bookkeeping).
    With ``head_rows`` (a routed or subset head) the head is the rows it computes (routed: at most
    min(N, w·k) groups per forward, no run's unions here; :func:`run_lm_head_shares` uses them)."""
    body, head, sm = forward_times(costs, first_rows, context, head_rows)
    draft = body + head + sm + tree_s
    return head / draft, (head + sm) / draft


def run_lm_head_shares(per_cycle: StageTimes) -> tuple[float, float] | None:
    """The same shares over a run's own cycles (the prediction's mean cycle: its widths, first-forward
    rows and recorded unions of router groups); None for drafters without drafting forwards."""
    if per_cycle.draft <= 0 or per_cycle.head <= 0:
        return None
    return per_cycle.head / per_cycle.draft, (per_cycle.head + per_cycle.softmax_topk) / per_cycle.draft


# ---------------------------------------------------------------------------------------------
# what the run measured, stage by stage (to explain the gap)


@dataclass(frozen=True)
class MeasuredStages:
    """Per-cycle means from ``cycles.jsonl`` and per-run sums from ``samples.jsonl`` of one method."""

    cycles: int
    draft: float  # mean seconds per cycle
    score: float
    verify: float
    commit: float
    outside: float  # (Σ decode wall − Σ timed stages) / cycles: drafter prefill + loop overhead
    prefill_s: float  # Σ prefill_s over samples


def measured_stages(samples: Sequence[SampleRecord], cycle_rows: Sequence[Mapping[str, Any]]) -> MeasuredStages | None:
    """None where the run holds no cycle rows for these samples or lacks prefill times."""
    keys = {(s.question_id, s.turn) for s in samples}
    rows = [r for r in cycle_rows if (r["question_id"], r["turn"]) in keys]
    if not rows or any(s.prefill_s is None for s in samples):
        return None
    n = len(rows)
    sums = {k: sum(r[k] for r in rows) for k in ("draft_s", "score_s", "verify_s", "commit_s")}
    decode = sum(s.wall_s - s.prefill_s for s in samples)
    return MeasuredStages(n, sums["draft_s"] / n, sums["score_s"] / n, sums["verify_s"] / n, sums["commit_s"] / n,
                          (decode - sum(sums.values())) / n, sum(s.prefill_s for s in samples))


@dataclass(frozen=True)
class GapRow:
    stage: str
    predicted: float  # seconds (per cycle, or per run for prefill)
    measured: float | None


def gap_rows(pred: Prediction, meas: MeasuredStages | None) -> tuple[GapRow, ...]:
    """Predicted vs measured, stage by stage (per cycle; prefill summed over the samples)."""
    p = pred.per_cycle
    outside = (pred.drafter_prefill_s / pred.cycles if pred.cycles else 0.0) + p.loop
    m = meas
    return (
        GapRow("draft: drafter forwards (body)", p.body, None),
        GapRow("draft: LM-head matmul", p.head, None),
        GapRow("draft: log-softmax + top-k", p.softmax_topk, None),
        GapRow("draft: tree, rerank (no-op loop)", p.tree, None),
        GapRow("draft (total)", p.draft, m and m.draft),
        GapRow("score: T_V(n, ctx)", p.score, m and m.score),
        GapRow("verify", p.verify, m and m.verify),
        GapRow("commit", p.commit, m and m.commit),
        GapRow("drafter prefill + loop (T_dpf/C + T_py)", outside, m and m.outside),
        GapRow("cycle (total)", p.total + outside - p.loop,
               m and m.draft + m.score + m.verify + m.commit + m.outside),
        GapRow("prefill, Σ over samples", pred.prefill_s, m and m.prefill_s),
    )


def costs_from_json(profile: Mapping[str, Any], label: str) -> DrafterCosts | None:
    """The cost-model terms of method ``label`` in a ``profile.json`` body (None where absent or unsupported)."""
    entry = profile.get("methods", {}).get(label)
    if not entry or not entry.get("supported"):
        return None
    forward = ForwardCosts.from_json(entry["forward"]) if entry.get("forward") else None
    early = EarlyExitCosts.from_json(entry["early_exit"]) if entry.get("early_exit") else None
    rows = HeadRowCosts.from_json(entry["head_rows"]) if entry.get("head_rows") else None
    return DrafterCosts(forward, LoopCosts.from_json(entry["loop"]), early, rows)


# ---------------------------------------------------------------------------------------------
# estimates for a run directory (pure: records and profile.json in, numbers out)



@dataclass(frozen=True)
class Estimate:
    """Predicted speedup of one drafter, beside what the run measured (None for a what-if)."""

    label: str
    tree: str | None
    prediction: Prediction
    measured: MeasuredStages | None
    speedup: float | None  # measured, as stats.compare (results.json)
    speedup_decode: float | None
    what_if: bool = False  # acceptance from replay of another tree, not from the run

    def to_json(self) -> dict:
        return {"tree": self.tree, "tau_source": "replay" if self.what_if else "run", **self.prediction.to_json()}


def estimate_method(label: str, samples: Sequence[SampleRecord], cycle_rows: Sequence[Mapping[str, Any]],
                    profile: Mapping[str, Any], entry: Mapping[str, Any], nodes: int) -> Estimate | None:
    """The run's own setting of ``label``: acceptance from its samples / cycles, latency from ``profile``.
    ``nodes``: tree nodes per cycle where cycles.jsonl has no row. None when the profile lacks the method."""
    costs = costs_from_json(profile, label)
    if costs is None:
        return None
    own = [s for s in samples if s.method == label]
    rows = [r for r in cycle_rows if r["method"] == label]
    pred = predict_against_vanilla(sample_shapes(own, rows, nodes), samples, profile, costs)
    if pred is None:
        return None
    return Estimate(label, entry.get("tree"), pred, measured_stages(own, rows), entry.get("speedup"),
                    entry.get("speedup_decode"))


def predict_against_vanilla(spec: Sequence[SampleShape], samples: Sequence[SampleRecord], profile: Mapping[str, Any],
                            costs: DrafterCosts) -> Prediction | None:
    """``predict`` with the run's vanilla samples and the profile's target and vanilla terms."""
    van_costs = costs_from_json(profile, VANILLA)
    if van_costs is None or not profile.get("t_v"):
        return None
    vanilla = sample_shapes([s for s in samples if s.method == VANILLA], (), 1)
    return predict(spec, vanilla, TargetCosts.from_json(profile), costs, van_costs)


def write_predictions(results: dict, estimates: Sequence[Estimate], specs: Sequence[Any] = ()) -> dict:
    """``drafters.<label>.speedup_predicted`` / ``speedup_decode_predicted`` / ``speedup_model`` for the run's
    settings, ``drafters.<label>.what_if`` (one entry per tree) for replayed ones, and
    ``what_if_drafters.<label>`` (with its spec) for what-if drafters the run did not time."""
    given = {spec.label: spec for spec in specs}
    for e in estimates:
        entry = results.get("drafters", {}).get(e.label)
        if entry is None:
            spec = given.get(e.label)
            if spec is not None and e.what_if:
                results.setdefault("what_if_drafters", {})[e.label] = {
                    "name": spec.name, "checkpoint": spec.checkpoint, **e.to_json()}
            continue
        if e.what_if:
            kept = [w for w in entry.get("what_if", []) if w.get("tree") != e.tree]
            entry["what_if"] = kept + [e.to_json()]
        else:
            entry["speedup_predicted"] = e.prediction.speedup
            entry["speedup_decode_predicted"] = e.prediction.speedup_decode
            entry["speedup_model"] = e.to_json()
            shares = run_lm_head_shares(e.prediction.per_cycle)
            if shares is not None:  # over the run's own cycles: supersedes the profile's typical cycle
                entry["lm_head_share"], entry["lm_head_total_share"] = shares
    return results
