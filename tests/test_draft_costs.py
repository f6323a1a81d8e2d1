"""Cost terms of oracles, early exit and routed / subset heads: hand-computed arithmetic, measured structure."""

import pytest
import torch

from coral_bench.costmodel import profile as pf
from coral_bench.costmodel import noop
from coral_bench.costmodel.curves import Curve, Grid
from coral_bench.costmodel.draft_costs import EarlyExitCosts, HeadRowCosts
from coral_bench.drafters.draft_heads import HeadLayout, RoutedHead, SubsetHead
from coral_bench.drafters.router import Router
from coral_bench.drafters.vocab_grouping import contiguous_grouping
from coral_bench.costmodel.terms import head_row_costs
from coral_bench.core.records import SampleRecord
from coral_bench.costmodel.speedup import (DrafterCosts, ForwardCosts, LoopCosts, TargetCosts, costs_from_json, cycle_time,
                                 predict, sample_shapes)
from coral_bench.core.target import Target
from coral_bench.run.tiny import tiny_config, tiny_model
from coral_bench.core.tree import TreeShape
from test_profile import TickClock  # every timed stage of the decode loop lasts one tick

CPU = torch.device("cpu")
SMALL = pf.ProfileSettings(nodes=(1, 2, 4), contexts=(8, 24), prompts=(8,), repeats=1, noop_cycles=20)
LOOP = LoopCosts(tree_s=0.5, verify_s=0.1, commit_s=0.2, loop_s=0.1, score_call_s=0.0, cycles=1)
# T_V(n) = 9 + n at any context; T_pf = 20
TARGET = TargetCosts(Grid.from_points([(1, 0, 10.0), (5, 0, 14.0), (1, 100, 10.0), (5, 100, 14.0)]),
                     Curve((10.0,), (20.0,)))


def _record(method, accepted, new_tokens):
    return SampleRecord(method, "q1", 0, "c", 10, tuple(range(new_tokens)), "", new_tokens, 1.0, 0.1,
                        len(accepted), tuple(accepted), "max_new_tokens")


# ---- oracles ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["oracle", "noisy-oracle"])
def test_oracle_drafting_is_its_measured_lookup_and_the_model_adds_it_up(name):
    """The no-op loop runs the real oracle code (a constant greedy line, untimed as in a run): on a tick clock
    every stage lasts one tick, so the oracle's cycle is its lookup + T_V + verify + commit + loop, no forwards."""
    tree = TreeShape.parse("top_k=2,depth=2,total_tokens=6")
    plans = [noop.NoopPlan(20, 30, (3, 3, 1, 0) * 8)] * 2
    loop = noop.noop_loop(tiny_config(), torch.float32, CPU, name, tree, plans, TickClock(), 10)
    assert (loop.verify_s, loop.commit_s, loop.loop_s) == (1, 1, 1) and loop.cycles >= 10
    # The untimed fetches of the greedy line read the clock too (one tick each beyond what they subtract):
    # the lookup is one tick per cycle plus at most one per cycle that fetched.
    assert 1 <= loop.tree_s <= 2
    costs = DrafterCosts(None, loop)
    shape = sample_shapes([_record(name, (3, 3), 9)], [], 6)[0]
    t = cycle_time(shape.cycles[1], TARGET, costs)
    assert (t.body, t.head, t.softmax_topk) == (0, 0, 0)
    assert t.total == pytest.approx(loop.tree_s + 15 + 1 + 1 + 1)  # lookup, T_V(6), verify, commit, loop


# ---- early exit ---------------------------------------------------------------------------------------

LAYERS = (Curve((0.0, 100.0), (1.0, 2.0)), Curve((0.0,), (2.0,)), Curve((0.0,), (4.0,)))  # layer 0 grows with ctx
EARLY = EarlyExitCosts(LAYERS, Curve((0.0,), (0.5,)), Curve((0.0,), (3.0,)), Curve((0.0,), (0.25,)),
                       exit_layers=2, steps=3)


def test_early_exit_cycle_by_hand():
    # steps at ctx 10, 11, 12 → mean ctx 11: layer 0 = 1.11, layer 1 = 2; body/step = 0.5 + 3.11 + 0.25
    body, head = EARLY.cycle(10.0)
    assert body == pytest.approx(3 * (0.5 + 1.11 + 2.0 + 0.25)) and head == pytest.approx(9.0)
    deeper = EarlyExitCosts(LAYERS, EARLY.embed_norm, EARLY.head, EARLY.glue, exit_layers=3, steps=3)
    assert deeper.cycle(10.0)[0] == pytest.approx(body + 3 * 4.0)  # the third layer counts only when N = 3
    costs = DrafterCosts(None, LOOP, early_exit=EARLY)
    shape = sample_shapes([_record("ee", (3, 0), 6)], [], 4)[0]
    t = cycle_time(shape.cycles[0], TARGET, costs)
    assert (t.body, t.head) == pytest.approx(EARLY.cycle(10.0))
    assert t.total == pytest.approx(t.body + 9.0 + 0.5 + 13.0 + 0.1 + 0.2 + 0.1)  # + tree, T_V(4), verify, commit, loop
    van = sample_shapes([_record("vanilla", (0,) * 5, 6)], [], 1)
    p = predict([shape], van, TARGET, costs, DrafterCosts(None, LOOP))
    assert p.leviathan.gamma == 3  # K one-token steps per cycle
    with pytest.raises(ValueError, match="early exit"):
        EarlyExitCosts(LAYERS, EARLY.embed_norm, EARLY.head, EARLY.glue, exit_layers=4, steps=3)


def test_early_exit_profile_measures_every_layer_and_round_trips(clock):
    target = Target(tiny_model(dtype=torch.float32, num_hidden_layers=3), (2,))
    tree = TreeShape.parse("chain:2")
    spec = pf.MethodSpec("ee", "early-exit", "2", tree, (noop.NoopPlan(12, 10, (1, 2, 0)),))
    method = pf.profile_method(spec, target, SMALL, clock)
    ee = method.costs.early_exit
    assert method.costs.forward is None and len(ee.layers) == 3 and (ee.exit_layers, ee.steps) == (2, 2)
    assert ee.layers[0].xs == (8.0, 24.0) and all(y > 0 for c in ee.layers for y in c.ys)
    assert costs_from_json(pf.ProfileReport("t", None, (), (method,), SMALL).to_json(), "ee") == method.costs


# ---- routed and subset heads --------------------------------------------------------------------------

# U = |∪| · 10 head rows; matmul = U/10 seconds for one feature row, U/5 for four; sm half of that; router 0.1·w
ROUTED = HeadRowCosts("routed", 10.0, groups=4, k=1, router=Curve((1.0, 4.0), (0.1, 0.4)),
                      matmul=Grid.from_points([(10, 1, 1.0), (40, 1, 4.0), (10, 4, 2.0), (40, 4, 8.0)]),
                      softmax_topk=Grid.from_points([(10, 1, 0.5), (40, 1, 2.0), (10, 4, 1.0), (40, 4, 4.0)]))
FORWARD = ForwardCosts(first_body=Grid.from_points([(1, 0, 1.0), (2, 0, 2.0)]),
                       expand_body=Grid.from_points([(4, 0, 3.0)]), head=Curve((1.0, 4.0), (100.0, 400.0)),
                       softmax_topk=Curve((1.0, 4.0), (50.0, 200.0)), prefill=Curve((10.0,), (4.0,)), widths=(4, 4))


def test_routed_head_cost_follows_the_recorded_union_sizes():
    rows = [{"method": "cr", "question_id": "q1", "turn": 0, "cycle": 0, "nodes": 5, "head_union": [1, 2, 3]},
            {"method": "cr", "question_id": "q1", "turn": 0, "cycle": 1, "nodes": 5}]  # a row without unions
    shape = sample_shapes([_record("cr", (2, 1), 6)], rows, 5)[0]
    assert shape.cycles[0].head_union == (1, 2, 3) and shape.cycles[1].head_union == ()
    costs = DrafterCosts(FORWARD, LOOP, head_rows=ROUTED)
    t = cycle_time(shape.cycles[0], TARGET, costs)
    # forwards over 1, 4, 4 feature rows with U = 10, 20, 30: router + matmul, then sm
    assert t.head == pytest.approx((0.1 + 1.0) + (0.4 + 4.0) + (0.4 + 6.0))
    assert t.softmax_topk == pytest.approx(0.5 + 2.0 + 3.0)
    assert t.body == pytest.approx(3.0 + 3.0)  # the full head's 100 s never enter
    # no recorded union: the most a forward can select, min(N, w·k) groups → U = 10, 40, 40
    t2 = cycle_time(shape.cycles[1], TARGET, costs)
    assert t2.head == pytest.approx((0.1 + 1.0) + 2 * (0.4 + 8.0))
    subset = HeadRowCosts("frequency-subset", 40.0, 1, 1, None, ROUTED.matmul, ROUTED.softmax_topk)
    assert subset.cycle((1, 4), (1, 1)) == pytest.approx((4.0 + 8.0, 2.0 + 4.0))  # U = V_sub whatever the union
    assert HeadRowCosts.from_json(ROUTED.to_json()) == ROUTED


def test_lm_head_share_counts_the_rows_a_routed_head_computes():
    """The share is of the head the drafter runs, not of the full LM head it replaces."""
    from coral_bench.costmodel.speedup import StageTimes, lm_head_shares, run_lm_head_shares

    # forwards over 1, 4, 4 rows: body 0 (no predecessor) + 3 + 3; full head 100 + 400 + 400, sm 50 + 200 + 200
    full, full_total = lm_head_shares(FORWARD, 0.0, None, 0.0)
    assert full == pytest.approx(900 / (6 + 900 + 450)) and full_total == pytest.approx(1350 / 1356)
    # routed, no run's unions: min(N, w·k) groups → U = 10, 40, 40: head (0.1 + 1) + 2·(0.4 + 8), sm 0.5 + 2·4
    share, total = lm_head_shares(FORWARD, 0.0, None, 0.0, ROUTED)
    head, sm = 0.1 + 1.0 + 2 * 8.4, 0.5 + 8.0
    assert share == pytest.approx(head / (6 + head + sm)) and total == pytest.approx((head + sm) / (6 + head + sm))
    assert share < full
    # over a run's mean cycle
    assert run_lm_head_shares(StageTimes(body=6.0, head=2.0, softmax_topk=1.0, tree=1.0)) == pytest.approx((0.2, 0.3))
    assert run_lm_head_shares(StageTimes(tree=1.0)) is None  # model-free drafters have no head


def test_head_rows_are_measured_over_row_counts_and_widths(clock):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 16, generator=gen)
    router = Router(16, 8, width=8)
    routed = head_row_costs(RoutedHead(router, HeadLayout.of(contiguous_grouping(64, 8), weight, None), k=2),
                            (1, 3), 3, clock, 1, gen)
    assert routed.kind == "routed" and (routed.groups, routed.k, routed.rows_per_union) == (8, 2, 8.0)
    assert routed.matmul.rows[0] == 8 and routed.matmul.rows[-1] == 64 and len(routed.matmul.rows) >= 3
    assert routed.matmul.contexts == (1, 3) and routed.router.xs == (1.0, 3.0)
    subset = head_row_costs(SubsetHead(torch.arange(20), weight, None), (1, 3), 3, clock, 1, gen)
    assert subset.router is None and subset.matmul.rows == (20,) and subset.head_rows(3, None) == 20
