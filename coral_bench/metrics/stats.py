"""Aggregation of sample records: τ, reach_d, speedups with bootstrap CIs (greedy equality: ``equality.py``).

Pure Python/numpy (reports and the speedup model read it without torch). Every quantity follows
the definitions of docs/methods.md §1; the names used here are the names used there:

- tokens emitted by cycles = ``new_tokens − 1`` per sample (the prefill token is a new token but
  belongs to no cycle);
- τ pooled = Σ emitted by cycles / Σ cycles; τ per question = mean over questions of each
  question's pooled τ (all turns of a question pooled);
- reach_d = fraction of cycles whose accepted ≥ d; identity: τ before truncation = 1 + Σ reach_d;
- speedups: ``speedup`` (with prefill), ``speedup_decode`` (without), ``speedup_per_prompt`` (ratio
  of per-question means), ``speedup_ci95`` (paired bootstrap over questions).

Every result is a frozen dataclass whose ``to_json()`` gives plain dicts, lists, ints, floats and
None (never NaN: an undefined quantity is None).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from coral_bench.core.records import STOP_LENGTH, SampleRecord
from coral_bench.metrics.sample_metrics import sample_metrics


# ---------------------------------------------------------------------------------------------
# small helpers


def _ratio(num: float, den: float | None) -> float | None:
    """num / den, or None where the denominator is not positive (undefined, never NaN)."""
    return float(num) / float(den) if den is not None and den > 0 else None


def _emitted_by_cycles(s: SampleRecord) -> int:
    """Tokens emitted by the sample's cycles (docs/methods.md §1): all new tokens but the prefill one.

    A sample without cycles (EOS straight after prefill, or a peer that records no cycles) adds
    nothing, so it can neither inflate nor deflate τ.
    """
    return s.new_tokens - 1 if s.cycles > 0 else 0


def _cut_tokens(s: SampleRecord) -> int:
    """Tokens accepted (or bonus) but cut at EOS / max_new_tokens: Σ(accepted + 1) − emitted.

    Only the last cycle of a sample can be cut (a cut ends the sample), so this is ≥ 0 in any
    consistent record; a negative value means the record is wrong, and we say so.
    """
    if s.cycles == 0:
        return 0
    cut = sum(a + 1 for a in s.accepted) - _emitted_by_cycles(s)
    if cut < 0:
        raise ValueError(
            f"sample {s.key}: cycles emitted {_emitted_by_cycles(s)} tokens, more than accepted + 1 "
            f"per cycle allows ({cut + _emitted_by_cycles(s)})"
        )
    return cut


def _check_samples(samples: Sequence[SampleRecord], what: str) -> None:
    """One method, unique (question, turn) keys, cycles consistent with accepted, sane times.

    A duplicate key is the typical result of a resume bug and would silently count a turn twice.
    """
    if not samples:
        raise ValueError(f"{what}: no samples")
    methods = {s.method for s in samples}
    if len(methods) != 1:
        raise ValueError(f"{what}: samples of several methods {sorted(methods)}")
    seen: set[tuple[str, int]] = set()
    for s in samples:
        k = (s.question_id, s.turn)
        if k in seen:
            raise ValueError(f"{what}: duplicate sample for question {s.question_id!r} turn {s.turn}")
        seen.add(k)
        if len(s.accepted) != s.cycles:
            raise ValueError(f"sample {s.key}: {s.cycles} cycles but {len(s.accepted)} accepted counts")
        if any(a < 0 for a in s.accepted):
            raise ValueError(f"sample {s.key}: negative accepted count")
        prefill = s.prefill_s or 0.0  # None: not measurable (peers)
        if s.new_tokens < 0 or prefill < 0 or s.wall_s < prefill:
            raise ValueError(
                f"sample {s.key}: need new_tokens ≥ 0 and 0 ≤ prefill_s ≤ wall_s "
                f"(got {s.new_tokens}, {s.prefill_s}, {s.wall_s})"
            )


def repetition(ids: Sequence[int], n: int = 4) -> float:
    """1 − distinct n-grams / n-grams of ``ids``; 0.0 for outputs with fewer than n tokens.

    A cheap loop detector (docs/methods.md §8: small models loop, so report it beside τ): 0 for text
    that never repeats an n-gram, close to 1 for a degenerate loop. Short outputs count as 0
    (they cannot loop) rather than being left out, so the mean stays over all samples.
    """
    if len(ids) < n:
        return 0.0
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float | None]:
    """Percentiles of ``values`` (numpy's linear interpolation) as ``{"p50": …, "p90": …}``.

    Keys are ``f"p{q:g}"`` so they are JSON object keys; every value is None for an empty input.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {f"p{q:g}": None for q in qs}
    out = np.percentile(arr, list(qs))
    return {f"p{q:g}": float(v) for q, v in zip(qs, out)}


def _percentile_ci(stats: np.ndarray) -> tuple[float, float] | None:
    """Central 95% percentile interval of bootstrap statistics; undefined resamples are dropped."""
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return None
    low, high = np.percentile(stats, [2.5, 97.5])
    return (float(low), float(high))


def _bootstrap_indices(n: int, seed: int, resamples: int) -> np.ndarray:
    """[resamples, n] indices drawn with replacement, from a Generator seeded by ``seed`` only."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n))


# ---------------------------------------------------------------------------------------------
# one method


@dataclass(frozen=True)
class GroupSummary:
    """Pooled τ and tokens/s over a subset of one method's samples (a category or a turn)."""

    samples: int
    new_tokens: int
    wall_s: float
    cycles: int
    tau_pooled: float | None  # Σ emitted by cycles / Σ cycles; None without cycles
    tokens_per_s: float | None  # Σ new tokens / Σ wall

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "new_tokens": self.new_tokens,
            "wall_s": self.wall_s,
            "cycles": self.cycles,
            "tau_pooled": self.tau_pooled,
            "tokens_per_s": self.tokens_per_s,
        }


def _group(samples: Sequence[SampleRecord]) -> GroupSummary:
    new_tokens = sum(s.new_tokens for s in samples)
    wall = sum(s.wall_s for s in samples)
    cycles = sum(s.cycles for s in samples)
    return GroupSummary(
        samples=len(samples),
        new_tokens=new_tokens,
        wall_s=float(wall),
        cycles=cycles,
        tau_pooled=_ratio(sum(_emitted_by_cycles(s) for s in samples), cycles),
        tokens_per_s=_ratio(new_tokens, wall),
    )


def question_taus(samples: Sequence[SampleRecord]) -> dict[str, float]:
    """Each question's pooled τ, all its turns pooled (docs/methods.md §1, HASS convention).

    Questions without any cycle have no τ and are left out. This is the input of
    :func:`paired_difference` when comparing two drafters (docs/design.md §7: τ first, paired).
    """
    emitted: dict[str, int] = defaultdict(int)
    cycles: dict[str, int] = defaultdict(int)
    for s in samples:
        emitted[s.question_id] += _emitted_by_cycles(s)
        cycles[s.question_id] += s.cycles
    return {q: emitted[q] / cycles[q] for q in emitted if cycles[q] > 0}


@dataclass(frozen=True)
class MethodSummary:
    """Aggregates of one method over a run (docs/methods.md §1; docs/design.md §5 results fields).

    ``reach_by_depth[d − 1]`` is reach_d for d = 1 … max accepted; ``reach_conditional[d − 1]`` is
    reach_d / reach_{d−1} with reach_0 = 1; ``accept_histogram[a]`` counts cycles that accepted
    exactly a draft tokens. ``cut_tokens`` counts tokens accepted but cut at EOS / max_new_tokens,
    so that τ before truncation = (emitted_by_cycles + cut_tokens) / cycles = 1 + Σ reach_d.
    ``repetition_rate`` is the mean over samples of :func:`repetition` (4-grams of output_ids).
    """

    method: str
    samples: int
    questions: int
    max_new_tokens: int
    new_tokens: int
    wall_s: float  # prefill + decode
    prefill_s: float | None  # None when a sample could not time its prefill (peers)
    decode_s: float | None  # wall − prefill
    tokens_per_s: float | None  # Σ new tokens / Σ wall
    decode_tokens_per_s: float | None  # Σ new tokens / Σ (wall − prefill), as speedup_decode
    cycles: int
    emitted_by_cycles: int  # Σ (new_tokens − 1) over samples with cycles
    cut_tokens: int
    tau_pooled: float | None
    tau_per_question: float | None
    tau_uncut: float | None  # (emitted + cut) / cycles: τ before the cut at EOS / max_new_tokens
    tau_expected: float | None  # 1 + mean closed-form E[accepted] per cycle (T > 0 runs; docs/methods.md §4)
    reach_by_depth: tuple[float, ...]  # [max accepted]
    reach_conditional: tuple[float, ...]  # [max accepted]
    accept_histogram: tuple[int, ...]  # [max accepted + 1]
    frac_max_new_tokens: float
    repetition_rate: float
    by_category: dict[str, GroupSummary]
    by_turn: dict[int, GroupSummary]
    sample_metrics: Mapping[str, float | None] = field(default_factory=dict)  # metrics/sample_metrics.py

    def to_json(self) -> dict:
        """Plain JSON values; turn keys become strings (JSON object keys are strings)."""
        return {
            "method": self.method,
            "samples": self.samples,
            "questions": self.questions,
            "max_new_tokens": self.max_new_tokens,
            "new_tokens": self.new_tokens,
            "wall_s": self.wall_s,
            "prefill_s": self.prefill_s,
            "decode_s": self.decode_s,
            "tokens_per_s": self.tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "cycles": self.cycles,
            "emitted_by_cycles": self.emitted_by_cycles,
            "cut_tokens": self.cut_tokens,
            "tau_pooled": self.tau_pooled,
            "tau_per_question": self.tau_per_question,
            "tau_uncut": self.tau_uncut,
            "tau_expected": self.tau_expected,
            "reach_by_depth": list(self.reach_by_depth),
            "reach_conditional": list(self.reach_conditional),
            "accept_histogram": list(self.accept_histogram),
            "frac_max_new_tokens": self.frac_max_new_tokens,
            "repetition_rate": self.repetition_rate,
            "by_category": {k: v.to_json() for k, v in sorted(self.by_category.items())},
            "by_turn": {str(k): v.to_json() for k, v in sorted(self.by_turn.items())},
            "sample_metrics": dict(self.sample_metrics),
        }


def _tau_expected(samples: Sequence[SampleRecord]) -> float | None:
    """1 + Σ E[accepted] / cycles, when every cycle recorded its closed-form expectation."""
    cycles = sum(s.cycles for s in samples)
    if not cycles or any(len(s.expected_accepted) != s.cycles for s in samples):
        return None
    return 1.0 + sum(sum(s.expected_accepted) for s in samples) / cycles


def summarize(samples: Sequence[SampleRecord], max_new_tokens: int) -> MethodSummary:
    """Aggregate one method's samples (one per question and turn) into a :class:`MethodSummary`.

    Definitions: docs/methods.md §1. ``max_new_tokens`` is the run's limit: it is recorded and checked
    against the records (no sample may exceed it; one stopped by the limit must have reached it).
    """
    _check_samples(samples, "summarize")
    for s in samples:
        if s.new_tokens > max_new_tokens or (s.stop_reason == STOP_LENGTH and s.new_tokens != max_new_tokens):
            raise ValueError(
                f"sample {s.key}: {s.new_tokens} new tokens with stop reason {s.stop_reason!r} "
                f"and max_new_tokens {max_new_tokens}"
            )

    new_tokens = sum(s.new_tokens for s in samples)
    wall = float(sum(s.wall_s for s in samples))
    timed_prefill = all(s.prefill_s is not None for s in samples)
    prefill = float(sum(s.prefill_s for s in samples)) if timed_prefill else None
    decode = float(sum(s.wall_s - s.prefill_s for s in samples)) if timed_prefill else None
    cycles = sum(s.cycles for s in samples)
    emitted = sum(_emitted_by_cycles(s) for s in samples)

    accepted = np.fromiter((a for s in samples for a in s.accepted), dtype=np.int64, count=cycles)
    hist = np.bincount(accepted) if cycles else np.zeros(0, dtype=np.int64)
    # reach_d = #cycles with accepted ≥ d / #cycles: a reversed cumulative sum of the histogram.
    at_least = np.cumsum(hist[::-1])[::-1]  # at_least[d] = #cycles with accepted ≥ d
    reach = tuple(float(c) / cycles for c in at_least[1:]) if cycles else ()
    # reach_d ≥ reach_max > 0 for every listed d, so the conditional rate is always defined.
    conditional = tuple(r / p for r, p in zip(reach, (1.0,) + reach))

    taus = question_taus(samples)
    by_category: dict[str, list[SampleRecord]] = defaultdict(list)
    by_turn: dict[int, list[SampleRecord]] = defaultdict(list)
    for s in samples:
        by_category[s.category].append(s)
        by_turn[s.turn].append(s)

    return MethodSummary(
        method=samples[0].method,
        samples=len(samples),
        questions=len({s.question_id for s in samples}),
        max_new_tokens=max_new_tokens,
        new_tokens=new_tokens,
        wall_s=wall,
        prefill_s=prefill,
        decode_s=decode,
        tokens_per_s=_ratio(new_tokens, wall),
        decode_tokens_per_s=_ratio(new_tokens, decode),
        cycles=cycles,
        emitted_by_cycles=emitted,
        cut_tokens=sum(_cut_tokens(s) for s in samples),
        tau_pooled=_ratio(emitted, cycles),
        tau_per_question=float(np.mean(list(taus.values()))) if taus else None,
        tau_uncut=_ratio(emitted + sum(_cut_tokens(s) for s in samples), cycles),
        tau_expected=_tau_expected(samples),
        reach_by_depth=reach,
        reach_conditional=conditional,
        accept_histogram=tuple(int(c) for c in hist),
        frac_max_new_tokens=sum(s.stop_reason == STOP_LENGTH for s in samples) / len(samples),
        repetition_rate=float(np.mean([repetition(s.output_ids) for s in samples])),
        by_category={k: _group(v) for k, v in by_category.items()},
        by_turn={k: _group(v) for k, v in by_turn.items()},
        sample_metrics=sample_metrics(samples),
    )


# ---------------------------------------------------------------------------------------------
# speculative against vanilla


def paired_samples(
    spec: Sequence[SampleRecord], vanilla: Sequence[SampleRecord]
) -> tuple[list[tuple[SampleRecord, SampleRecord]], int, int]:
    """(spec, vanilla) samples sharing (question_id, turn), in a stable order; unpaired counts."""
    _check_samples(spec, "spec")
    _check_samples(vanilla, "vanilla")
    v_by_key = {(s.question_id, s.turn): s for s in vanilla}
    pairs = [(s, v_by_key[(s.question_id, s.turn)]) for s in spec if (s.question_id, s.turn) in v_by_key]
    pairs.sort(key=lambda p: (p[0].question_id, p[0].turn))
    return pairs, len(spec) - len(pairs), len(vanilla) - len(pairs)


@dataclass(frozen=True)
class Speedup:
    """Speculative vs vanilla on the same prompts (docs/methods.md §1 SR conventions).

    Only (question_id, turn) pairs present on both sides count: ``pairs`` of them over
    ``questions`` questions; ``unpaired_spec`` / ``unpaired_vanilla`` samples were left out.
    ``speedup_per_question[q]`` is the question's tokens/s ratio (its turns pooled), for plots.
    """

    pairs: int
    questions: int
    unpaired_spec: int
    unpaired_vanilla: int
    tokens_per_s_spec: float | None
    tokens_per_s_vanilla: float | None
    speedup: float | None  # (Σ tok / Σ wall)_spec ÷ (Σ tok / Σ wall)_vanilla
    speedup_decode: float | None  # the same with wall − prefill
    speedup_per_prompt: float | None  # mean_q tok/s spec ÷ mean_q tok/s vanilla (ratio of means)
    speedup_ci95: tuple[float, float] | None  # percentile interval of `speedup`, paired bootstrap
    speedup_per_question: dict[str, float | None]
    seed: int
    resamples: int

    def to_json(self) -> dict:
        return {
            "pairs": self.pairs,
            "questions": self.questions,
            "unpaired_spec": self.unpaired_spec,
            "unpaired_vanilla": self.unpaired_vanilla,
            "tokens_per_s_spec": self.tokens_per_s_spec,
            "tokens_per_s_vanilla": self.tokens_per_s_vanilla,
            "speedup": self.speedup,
            "speedup_decode": self.speedup_decode,
            "speedup_per_prompt": self.speedup_per_prompt,
            "speedup_ci95": list(self.speedup_ci95) if self.speedup_ci95 is not None else None,
            "speedup_per_question": dict(sorted(self.speedup_per_question.items())),
            "seed": self.seed,
            "resamples": self.resamples,
        }


def compare(
    spec: Sequence[SampleRecord], vanilla: Sequence[SampleRecord], seed: int = 0, resamples: int = 2000
) -> Speedup:
    """Speedups of ``spec`` over ``vanilla`` (docs/methods.md §1), paired by (question_id, turn).

    The CI resamples question ids with replacement, spec and vanilla together (a question's
    turns stay together, since turn 2 depends on turn 1), recomputing the headline ``speedup``
    each time; ``resamples = 0`` skips it. Deterministic for a given ``seed``.
    """
    if resamples < 0:
        raise ValueError(f"resamples must be ≥ 0, got {resamples}")
    pairs, unpaired_spec, unpaired_vanilla = paired_samples(spec, vanilla)
    if not pairs:
        raise ValueError("compare: no (question_id, turn) present on both sides")

    # Per-question sums, turns pooled: the unit of the per-prompt mean and of the bootstrap.
    qids = sorted({s.question_id for s, _ in pairs})
    index = {q: i for i, q in enumerate(qids)}
    tok = np.zeros((2, len(qids)))  # [spec/vanilla, Q] new tokens
    wall = np.zeros((2, len(qids)))  # [spec/vanilla, Q] wall seconds with prefill
    dec = np.zeros((2, len(qids)))  # [spec/vanilla, Q] wall seconds without prefill
    for s, v in pairs:
        i = index[s.question_id]
        for side, r in enumerate((s, v)):
            tok[side, i] += r.new_tokens
            wall[side, i] += r.wall_s
            dec[side, i] += r.wall_s - r.prefill_s if r.prefill_s is not None else np.nan

    def pooled(t: np.ndarray, w: np.ndarray) -> float | None:
        spec_rate, van_rate = _ratio(t[0].sum(), w[0].sum()), _ratio(t[1].sum(), w[1].sum())
        if spec_rate is None or not van_rate:
            return None
        return spec_rate / van_rate

    per_q_rate = [[_ratio(tok[side, i], wall[side, i]) for i in range(len(qids))] for side in (0, 1)]
    per_question = {
        q: (per_q_rate[0][i] / per_q_rate[1][i] if per_q_rate[0][i] is not None and per_q_rate[1][i] else None)
        for i, q in enumerate(qids)
    }
    per_prompt = None
    if all(r is not None for side in per_q_rate for r in side):
        mean_spec, mean_van = float(np.mean(per_q_rate[0])), float(np.mean(per_q_rate[1]))
        per_prompt = mean_spec / mean_van if mean_van > 0 else None

    ci = None
    if resamples:
        idx = _bootstrap_indices(len(qids), seed, resamples)  # [R, Q]
        t, w = tok[:, idx].sum(axis=2), wall[:, idx].sum(axis=2)  # [2, R]
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = (t[0] / w[0]) / (t[1] / w[1])  # [R]; undefined resamples become inf/NaN, dropped
        ci = _percentile_ci(boot)

    return Speedup(
        pairs=len(pairs),
        questions=len(qids),
        unpaired_spec=unpaired_spec,
        unpaired_vanilla=unpaired_vanilla,
        tokens_per_s_spec=_ratio(tok[0].sum(), wall[0].sum()),
        tokens_per_s_vanilla=_ratio(tok[1].sum(), wall[1].sum()),
        speedup=pooled(tok, wall),
        speedup_decode=pooled(tok, dec),
        speedup_per_prompt=per_prompt,
        speedup_ci95=ci,
        speedup_per_question=per_question,
        seed=seed,
        resamples=resamples,
    )


def paired_difference(
    a: Mapping[str, float], b: Mapping[str, float], seed: int = 0, resamples: int = 2000
) -> tuple[float, float | None, float | None]:
    """Mean of a[q] − b[q] over questions in both, with a 95% paired-bootstrap percentile CI.

    For comparing two drafters question by question (e.g. :func:`question_taus` of two training
    objectives; docs/design.md §7). Questions present on one side only are ignored; none in common is an
    error. Returns (mean_diff, ci95_low, ci95_high); the bounds are None when ``resamples`` is 0.
    """
    common = sorted(a.keys() & b.keys())
    if not common:
        raise ValueError("paired_difference: no question present on both sides")
    diff = np.array([float(a[q]) - float(b[q]) for q in common])  # [Q]
    mean = float(diff.mean())
    if not resamples:
        return mean, None, None
    boot = diff[_bootstrap_indices(len(common), seed, resamples)].mean(axis=1)  # [R]
    low, high = np.percentile(boot, [2.5, 97.5])
    return mean, float(low), float(high)
