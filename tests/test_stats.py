"""Aggregation against hand-computed answers (docs/methods.md §1 definitions, §4 tie rule)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coral_bench.core.records import STOP_EOS, STOP_LENGTH, SampleRecord
from coral_bench.metrics.stats import (
    compare,
    paired_difference,
    percentiles,
    question_taus,
    repetition,
    summarize,
)

MAX_NEW = 512


def rec(
    qid="q1",
    turn=0,
    accepted=(),
    new_tokens=None,
    wall=1.0,
    prefill=0.1,
    stop=STOP_EOS,
    output_ids=None,
    category="writing",
    method="spec",
):
    """A SampleRecord; by default uncut: new tokens = 1 (prefill) + Σ (accepted + 1)."""
    if new_tokens is None:
        new_tokens = 1 + sum(a + 1 for a in accepted)
    if output_ids is None:
        output_ids = tuple(range(new_tokens))
    return SampleRecord(
        method=method,
        question_id=qid,
        turn=turn,
        category=category,
        prompt_tokens=7,
        output_ids=tuple(output_ids),
        output_text="",
        new_tokens=new_tokens,
        wall_s=wall,
        prefill_s=prefill,
        cycles=len(accepted),
        accepted=tuple(accepted),
        stop_reason=stop,
    )


def vanilla_rec(qid="q1", turn=0, new_tokens=5, **kw):
    """Vanilla: one token per cycle, every cycle accepts nothing."""
    return rec(qid, turn, accepted=(0,) * (new_tokens - 1), method="vanilla", **kw)


# ---------------------------------------------------------------------------------------------
# summarize


def crafted():
    # q1 turn 0: τ 4 (1 cycle, 4 tokens); q1 turn 1: τ 1 (2 cycles); q2: τ 6 (1 cycle).
    return [
        rec("q1", 0, accepted=(3,), category="math"),
        rec("q1", 1, accepted=(0, 0), category="math"),
        rec("q2", 0, accepted=(5,), category="code"),
    ]


def test_tau_pooled_and_per_question_differ():
    s = summarize(crafted(), MAX_NEW)
    assert s.cycles == 4 and s.emitted_by_cycles == 12
    assert s.tau_pooled == pytest.approx(12 / 4)  # 3.0
    # q1 pools its turns: (4 + 2) / 3 = 2; q2: 6. Mean over questions 4 (a mean over turns would give 11/3).
    assert question_taus(crafted()) == pytest.approx({"q1": 2.0, "q2": 6.0})
    assert s.tau_per_question == pytest.approx(4.0)
    assert s.questions == 2 and s.samples == 3


def test_reach_histogram_and_identity():
    s = summarize(crafted(), MAX_NEW)
    # accepted per cycle: 3, 0, 0, 5
    assert s.accept_histogram == (2, 0, 0, 1, 0, 1)
    assert s.reach_by_depth == pytest.approx((0.5, 0.5, 0.5, 0.25, 0.25))
    assert s.reach_conditional == pytest.approx((0.5, 1.0, 1.0, 0.5, 1.0))
    assert s.cut_tokens == 0
    assert s.tau_pooled == pytest.approx(1 + sum(s.reach_by_depth))


def test_reach_identity_on_random_uncut_samples():
    rng = np.random.default_rng(1)
    samples = [
        rec(f"q{i}", t, accepted=tuple(rng.integers(0, 7, size=rng.integers(1, 30))))
        for i in range(12)
        for t in range(2)
    ]
    s = summarize(samples, MAX_NEW)
    assert s.cut_tokens == 0
    assert s.tau_pooled == pytest.approx(1 + sum(s.reach_by_depth), rel=1e-12)
    assert sum(s.accept_histogram) == s.cycles
    # conditional rates multiply back to reach_d
    assert np.cumprod(s.reach_conditional) == pytest.approx(np.array(s.reach_by_depth))


def test_truncated_last_cycle_counts_emitted_only():
    # Two cycles accept 2 and 3 (uncut: 3 + 4 tokens); the second is cut to 2 tokens at max_new_tokens = 6.
    s = summarize([rec(accepted=(2, 3), new_tokens=6, stop=STOP_LENGTH)], max_new_tokens=6)
    assert s.tau_pooled == pytest.approx(5 / 2)
    assert s.cut_tokens == 2
    # before truncation: τ = 1 + Σ reach_d = (emitted + cut) / cycles
    assert 1 + sum(s.reach_by_depth) == pytest.approx((s.emitted_by_cycles + s.cut_tokens) / s.cycles)
    assert s.frac_max_new_tokens == 1.0


def test_vanilla_tau_is_exactly_one():
    samples = [vanilla_rec("q1", 0, 9), vanilla_rec("q1", 1, 4), vanilla_rec("q2", 0, 17)]
    s = summarize(samples, MAX_NEW)
    assert s.tau_pooled == 1.0 and s.tau_per_question == 1.0
    assert s.reach_by_depth == () and s.reach_conditional == ()
    assert s.accept_histogram == (s.cycles,) and s.cycles == 8 + 3 + 16


def test_rates_fractions_repetition_and_groups():
    samples = [
        rec("q1", 0, accepted=(2, 1, 1), wall=2.0, prefill=0.5, output_ids=(1, 2, 3, 4, 1, 2, 3, 4),
            stop=STOP_LENGTH, category="math"),  # 8 new tokens
        rec("q2", 0, accepted=(0,), wall=1.0, prefill=0.25, output_ids=(1, 2), category="code"),  # 2
        rec("q2", 1, accepted=(2,), wall=1.0, prefill=0.25, category="code"),  # 4
    ]
    s = summarize(samples, max_new_tokens=8)
    assert s.new_tokens == 14 and s.wall_s == pytest.approx(4.0) and s.prefill_s == pytest.approx(1.0)
    assert s.decode_s == pytest.approx(3.0)
    assert s.tokens_per_s == pytest.approx(14 / 4) and s.decode_tokens_per_s == pytest.approx(14 / 3)
    assert s.frac_max_new_tokens == pytest.approx(1 / 3)
    # 4-grams of 1234 1234: 5 of them, 4 distinct → 0.2; a 2-token output → 0; 0..3 → 0.
    assert repetition((1, 2, 3, 4, 1, 2, 3, 4)) == pytest.approx(0.2)
    assert s.repetition_rate == pytest.approx(0.2 / 3)
    assert s.by_category["math"].tau_pooled == pytest.approx(7 / 3)
    assert s.by_category["code"].tau_pooled == pytest.approx(4 / 2)
    assert s.by_category["code"].tokens_per_s == pytest.approx(6 / 2)
    assert s.by_turn[0].tau_pooled == pytest.approx((7 + 1) / 4)
    assert s.by_turn[1].tokens_per_s == pytest.approx(4.0) and s.by_turn[1].samples == 1


def test_no_cycles_gives_none_not_nan():
    # EOS straight after prefill: one new token, no cycle.
    s = summarize([rec(accepted=(), new_tokens=1)], MAX_NEW)
    assert s.tau_pooled is None and s.tau_per_question is None
    assert s.reach_by_depth == () and s.accept_histogram == ()
    text = json.dumps(s.to_json(), allow_nan=False)
    assert json.loads(text)["tau_pooled"] is None


def test_to_json_is_plain():
    data = summarize(crafted(), MAX_NEW).to_json()
    back = json.loads(json.dumps(data, allow_nan=False))
    assert back == data  # already plain: lists, string keys
    assert set(back["by_turn"]) == {"0", "1"}
    assert back["reach_by_depth"] == [0.5, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize("samples,max_new", [
    ([], MAX_NEW),
    ([rec("q1"), rec("q1")], MAX_NEW),  # duplicate (question, turn)
    ([rec("q1"), rec("q2", method="other")], MAX_NEW),  # two methods
    ([rec(accepted=(1,), new_tokens=9)], MAX_NEW),  # emits more than accepted + 1
    ([rec(accepted=(1, 1), new_tokens=5)], 4),  # beyond max_new_tokens
    ([rec(accepted=(1, 1), stop=STOP_LENGTH)], MAX_NEW),  # stopped by a limit it did not reach
    ([rec(wall=0.1, prefill=0.2)], MAX_NEW),  # prefill longer than the turn
])
def test_inconsistent_records_raise(samples, max_new):
    with pytest.raises(ValueError):
        summarize(samples, max_new)


def test_cycles_must_match_accepted():
    bad = rec(accepted=(1, 1))
    bad = SampleRecord(**{**bad.to_json(), "cycles": 3})
    with pytest.raises(ValueError, match="accepted"):
        summarize([bad], MAX_NEW)


# ---------------------------------------------------------------------------------------------
# compare


def two_questions():
    spec = [
        rec("q1", 0, new_tokens=10, wall=1.0, prefill=0.2),
        rec("q1", 1, new_tokens=10, wall=1.0, prefill=0.2),
        rec("q2", 0, new_tokens=30, wall=1.0, prefill=0.5),
        rec("q3", 0, new_tokens=30, wall=1.0, prefill=0.5),  # no vanilla partner
    ]
    vanilla = [
        rec("q1", 0, new_tokens=10, wall=2.0, prefill=0.2, method="vanilla"),
        rec("q1", 1, new_tokens=10, wall=2.0, prefill=0.2, method="vanilla"),
        rec("q2", 0, new_tokens=30, wall=6.0, prefill=0.5, method="vanilla"),
        rec("q2", 1, new_tokens=30, wall=6.0, prefill=0.5, method="vanilla"),  # no spec partner
        rec("q4", 0, new_tokens=30, wall=6.0, prefill=0.5, method="vanilla"),  # no spec partner
    ]
    return spec, vanilla


def test_speedup_conventions_by_hand():
    r = compare(*two_questions(), seed=0, resamples=500)
    assert (r.pairs, r.questions, r.unpaired_spec, r.unpaired_vanilla) == (3, 2, 1, 2)
    # headline: (50 / 3) ÷ (50 / 10)
    assert r.tokens_per_s_spec == pytest.approx(50 / 3) and r.tokens_per_s_vanilla == pytest.approx(5.0)
    assert r.speedup == pytest.approx(10 / 3)
    # without prefill: (50 / 2.1) ÷ (50 / 9.1)
    assert r.speedup_decode == pytest.approx(9.1 / 2.1)
    # per prompt: spec q1 20/2 = 10, q2 30/1 = 30 → mean 20; vanilla q1 20/4 = 5, q2 30/6 = 5 → mean 5
    assert r.speedup_per_prompt == pytest.approx(4.0)
    assert r.speedup_per_question == pytest.approx({"q1": 2.0, "q2": 6.0})
    # resamples are {q1,q1} → 2, {q2,q2} → 6, mixed → 10/3
    low, high = r.speedup_ci95
    assert 2.0 - 1e-12 <= low <= r.speedup <= high <= 6.0 + 1e-12
    json.dumps(r.to_json(), allow_nan=False)


def random_run(n=30, seed=3):
    rng = np.random.default_rng(seed)
    spec, vanilla = [], []
    for i in range(n):
        tokens = int(rng.integers(20, 200))
        v_wall = tokens * 0.05 * rng.uniform(0.9, 1.1)
        vanilla.append(rec(f"q{i}", 0, new_tokens=tokens, wall=v_wall, prefill=0.05, method="vanilla"))
        spec.append(rec(f"q{i}", 0, new_tokens=tokens, wall=v_wall / rng.uniform(1.5, 3.0), prefill=0.05))
    return spec, vanilla


def test_bootstrap_contains_point_and_is_deterministic():
    spec, vanilla = random_run()
    a = compare(spec, vanilla, seed=7, resamples=1000)
    b = compare(spec, vanilla, seed=7, resamples=1000)
    c = compare(spec, vanilla, seed=8, resamples=1000)
    assert a.speedup_ci95 == b.speedup_ci95
    assert a.speedup_ci95 != c.speedup_ci95
    low, high = a.speedup_ci95
    assert low < a.speedup < high


def test_bootstrap_degenerates_when_every_question_has_the_same_ratio():
    spec, vanilla = random_run()
    spec = [rec(v.question_id, 0, new_tokens=v.new_tokens, wall=v.wall_s / 2.5, prefill=0.01) for v in vanilla]
    r = compare(spec, vanilla, seed=1, resamples=300)
    assert r.speedup == pytest.approx(2.5)
    assert r.speedup_ci95 == pytest.approx((2.5, 2.5), rel=1e-12)
    assert compare(spec, vanilla, resamples=0).speedup_ci95 is None


def test_compare_without_pairs_raises():
    with pytest.raises(ValueError, match="both sides"):
        compare([rec("q1")], [rec("q2", method="vanilla")])


def test_paired_difference():
    a = {"q1": 3.0, "q2": 4.0, "q3": 5.0}
    b = {"q1": 2.0, "q2": 2.0, "q3": 2.0, "q4": 9.0}  # q4 has no partner: ignored
    mean, low, high = paired_difference(a, b, seed=0, resamples=1000)
    assert mean == pytest.approx(2.0)
    assert 1.0 <= low <= mean <= high <= 3.0
    assert paired_difference(a, b, seed=0, resamples=1000) == (mean, low, high)
    assert paired_difference({"q1": 2.5, "q2": 3.5}, {"q1": 2.0, "q2": 3.0}) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(ValueError):
        paired_difference({"q1": 1.0}, {"q2": 1.0})


# ---------------------------------------------------------------------------------------------
# percentiles


def test_percentiles():
    p = percentiles(range(1, 101))
    assert p == pytest.approx({"p50": 50.5, "p90": 90.1, "p99": 99.01})
    assert percentiles([], qs=(50, 99.9)) == {"p50": None, "p99.9": None}


def test_stats_does_not_import_torch():
    code = "import sys, coral_bench.metrics.stats; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
