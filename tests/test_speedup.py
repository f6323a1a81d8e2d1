"""The cost model of docs/methods.md §7: interpolation, hand-computed arithmetic, run records in, results out."""

import subprocess
import sys

import pytest

from coral_bench.core.records import SampleRecord
from coral_bench.costmodel.speedup import (Curve, DrafterCosts, ForwardCosts, Grid, LoopCosts, MeasuredStages, TargetCosts,
                                 chain_expected, cycle_time, gap_rows, leviathan, lm_head_shares, measured_stages,
                                 predict, sample_shapes, shape_cycles, write_predictions, Estimate, SampleShape)


def test_speedup_imports_no_torch():
    """docs/design.md §4: the speedup model is pure maths (stats, speedup and report never import torch models)."""
    code = "import sys, coral_bench.costmodel.speedup; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_curve_interpolates_and_extrapolates_linearly_floored_at_zero():
    c = Curve.from_points([(1, 10.0), (5, 14.0), (9, 30.0)])
    assert c.at(1) == 10.0 and c.at(3) == 12.0 and c.at(7) == 22.0
    assert c.at(11) == pytest.approx(38.0)  # last segment continued
    assert Curve.from_points([(1, 1.0), (2, 3.0)]).at(0) == 0.0  # -1 floored
    assert Curve((4.0,), (2.5,)).at(100) == 2.5  # one point: constant
    with pytest.raises(ValueError):
        Curve((2.0, 1.0), (0.0, 0.0))


def test_grid_is_bilinear_and_needs_every_point():
    g = Grid.from_points([(1, 100, 1.0), (3, 100, 3.0), (1, 300, 2.0), (3, 300, 6.0)])
    assert g.at(2, 100) == 2.0 and g.at(2, 300) == 4.0 and g.at(2, 200) == 3.0
    assert Grid.from_points(g.points()) == g
    with pytest.raises(ValueError, match="incomplete"):
        Grid.from_points([(1, 100, 1.0), (3, 300, 2.0)])


# ---- a hand-computed example: known stage costs, known acceptance ------------------------------------
# T_V(n) = 9 + n (any ctx); T_pf = 20; drafter: body(rows) = rows for a first forward, 3 per expansion of
# width 2; head 0.5 / 0.8 and softmax+top-k 0.25 / 0.4 for 1 / 2 rows; T_dpf = 4; D = 3 (widths 2, 2).

TARGET = TargetCosts(Grid.from_points([(1, 0, 10.0), (5, 0, 14.0), (1, 100, 10.0), (5, 100, 14.0)]),
                     Curve((10.0,), (20.0,)))
FORWARD = ForwardCosts(first_body=Grid.from_points([(1, 0, 1.0), (2, 0, 2.0), (1, 100, 1.0), (2, 100, 2.0)]),
                       expand_body=Grid.from_points([(2, 0, 3.0), (2, 100, 3.0)]),
                       head=Curve((1.0, 2.0), (0.5, 0.8)), softmax_topk=Curve((1.0, 2.0), (0.25, 0.4)),
                       prefill=Curve((10.0,), (4.0,)), widths=(2, 2))
DRAFTER = DrafterCosts(FORWARD, LoopCosts(tree_s=0.6, verify_s=0.1, commit_s=0.2, loop_s=0.1, score_call_s=0.0,
                                          cycles=1))
VANILLA = DrafterCosts(None, LoopCosts(tree_s=0.05, verify_s=0.1, commit_s=0.1, loop_s=0.05, score_call_s=0.0,
                                       cycles=1))


def _record(method, accepted, new_tokens, wall=1.0, prefill=0.1):
    return SampleRecord(method, "q1", 0, "c", 10, tuple(range(new_tokens)), "", new_tokens, wall, prefill,
                        len(accepted), tuple(accepted), "max_new_tokens")


def test_cost_model_arithmetic_by_hand():
    spec = sample_shapes([_record("eagle", (2, 0, 3), 7)], [], 5)  # emitted 3, 1, then cut to 2
    van = sample_shapes([_record("vanilla", (0,) * 6, 7)], [], 1)
    assert [c.emitted for c in spec[0].cycles] == [3, 1, 2]
    assert [c.context for c in spec[0].cycles] == [10, 13, 14]
    assert [c.prev_rows for c in spec[0].cycles] == [None, 3, 1]
    # cycle 1: body 2·3 = 6 (no first body), head 0.5 + 2·0.8 = 2.1, sm 0.25 + 2·0.4 = 1.05, tree 0.6,
    # T_V(5) = 14, verify 0.1, commit 0.2, loop 0.1 → 24.15; cycle 2 adds body(3) = 3, cycle 3 body(1) = 1
    assert cycle_time(spec[0].cycles[0], TARGET, DRAFTER).total == pytest.approx(24.15)
    p = predict(spec, van, TARGET, DRAFTER, VANILLA)
    t_spec = 20 + 4 + 24.15 + 27.15 + 25.15  # 100.45
    t_van = 20 + 6 * (10 + 0.05 + 0.1 + 0.1 + 0.05)  # 81.8
    assert p.speedup == pytest.approx((7 / t_spec) / (7 / t_van))
    assert p.speedup_decode == pytest.approx((7 / (t_spec - 20)) / (7 / (t_van - 20)))  # T_dpf stays in decode
    assert p.tau == 2.0 and p.cycles == 3
    assert p.per_cycle.total == pytest.approx(76.45 / 3)
    assert p.per_cycle.body == pytest.approx(22 / 3) and p.per_cycle.head == pytest.approx(2.1)
    assert p.sr_infinity == pytest.approx(2 * 10.3 / (76.45 / 3))
    forward_per_cycle = (22 + 6.3 + 3.15) / 3
    assert p.leviathan.gamma == 3 and p.leviathan.c == pytest.approx(forward_per_cycle / 3 / 10.3)
    assert p.leviathan.value == pytest.approx(2.0 / (3 * p.leviathan.c + 1))


def test_expected_accepted_cycles_are_scaled_to_the_tokens_needed():
    """Replay at T > 0 gives E[accepted]; the cycle sum is scaled so the cycles emit exactly N − 1 tokens."""
    shape = SampleShape("q1", 0, 10, 7, shape_cycles(10, [5, 5], [1.0, 1.0], [2.0, 2.0]))  # 4 emitted, 6 needed
    van = sample_shapes([_record("vanilla", (0,) * 6, 7)], [], 1)
    p = predict([shape], van, TARGET, DRAFTER, VANILLA)
    assert p.cycles == pytest.approx(3.0)


def test_leviathan_chain_form():
    assert chain_expected(0.0, 4) == 1.0 and chain_expected(1.0, 4) == 5.0
    assert chain_expected(0.5, 2) == pytest.approx(1.75)
    lev = leviathan(1.75, 2, 0.1)
    assert lev.alpha == pytest.approx(0.5) and lev.value == pytest.approx(1.75 / 1.2)


def test_lm_head_shares_by_hand():
    # one row in the first forward: body 1 + 2·3 = 7, head 2.1, sm 1.05, tree 0.6 → draft 10.75
    share, total = lm_head_shares(FORWARD, 0.6, 1.0, 50.0)
    assert share == pytest.approx(2.1 / 10.75) and total == pytest.approx(3.15 / 10.75)


def test_json_round_trips():
    assert ForwardCosts.from_json(FORWARD.to_json()) == FORWARD
    assert TargetCosts.from_json(TARGET.to_json()) == TARGET
    assert LoopCosts.from_json(DRAFTER.loop.to_json()) == DRAFTER.loop
    assert {"nodes", "context", "seconds"} == set(TARGET.to_json()["t_v"][0])  # the report reads this shape


def test_measured_stages_and_the_gap_table():
    rec = _record("eagle", (2, 0, 3), 7, wall=10.0, prefill=1.0)
    rows = [{"method": "eagle", "question_id": "q1", "turn": 0, "cycle": i, "nodes": 5, "draft_s": 1.0,
             "score_s": 2.0, "verify_s": 0.5, "commit_s": 0.5} for i in range(3)]
    m = measured_stages([rec], rows)
    assert m == MeasuredStages(3, 1.0, 2.0, 0.5, 0.5, (9.0 - 12.0) / 3, 1.0)
    p = predict(sample_shapes([rec], rows, 5), sample_shapes([_record("vanilla", (0,) * 6, 7)], [], 1), TARGET,
                DRAFTER, VANILLA)
    table = {r.stage: r for r in gap_rows(p, m)}
    assert table["draft (total)"].measured == 1.0 and table["score: T_V(n, ctx)"].predicted == 14.0
    assert table["cycle (total)"].measured == pytest.approx(4.0 - 1.0)
    assert table["cycle (total)"].predicted == pytest.approx(76.45 / 3 + 4 / 3)  # + T_dpf spread over cycles


def test_write_predictions():
    p = predict(sample_shapes([_record("eagle", (2, 0, 3), 7)], [], 5),
                sample_shapes([_record("vanilla", (0,) * 6, 7)], [], 1), TARGET, DRAFTER, VANILLA)
    results = {"drafters": {"eagle": {"speedup": 0.9}}}
    write_predictions(results, [Estimate("eagle", "chain:3", p, None, 0.9, None),
                                Estimate("eagle", "chain:2", p, None, None, None, what_if=True)])
    entry = results["drafters"]["eagle"]
    assert entry["speedup_predicted"] == p.speedup and entry["speedup_decode_predicted"] == p.speedup_decode
    assert entry["speedup_model"]["tau_source"] == "run"
    assert [w["tree"] for w in entry["what_if"]] == ["chain:2"]
