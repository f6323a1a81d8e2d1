"""Greedy equality judged against a measured noise bound (docs/methods.md §4): the verdict rule, the
calibration that measures the bound, and the judge that compares later turns on their own history."""

from __future__ import annotations

import json

import pytest
import torch

from coral_bench.core.clock import Clock
from coral_bench.core.decode import generate
from coral_bench.core.drafter import DrafterSettings, generator_for
from coral_bench.core.records import SampleRecord
from coral_bench.core.sampling import SamplingConfig
from coral_bench.core.target import Target, TargetOutput
from coral_bench.core.tree import TreeShape
from coral_bench.drafters.registry import build_drafter
from coral_bench.metrics.equality import (DIVERGENT, IDENTICAL, NUMERICAL, OWN_HISTORY, SAME_PROMPT, Comparison,
                                          classify, first_divergence)
from coral_bench.run.chat import turn_prompt
from coral_bench.run.judge import judge, noise_bounds
from coral_bench.run.noise import NoiseShape, _calibration_tree, measure_noise_bounds
from coral_bench.run.suites import limit, load_suite
from coral_bench.run.targets import load_target
from coral_bench.run.tiny import tiny_model

PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 40, 41, 42, 43]]
TREE16 = NoiseShape.of(TreeShape.parse("top_k=4,depth=3,total_tokens=16"))
CHAIN5 = NoiseShape.of(TreeShape.parse("chain:4"))


# ---- the verdict rule ------------------------------------------------------------------------
def test_first_divergence():
    assert first_divergence((1, 2, 3), (1, 2, 3)) is None
    assert first_divergence((), ()) is None
    assert first_divergence((1, 2, 3), (1, 2, 4)) == 2
    assert first_divergence((1, 2), (1, 2, 3)) == 2
    assert first_divergence((5,), ()) == 0


def test_verdicts_and_counts():
    cases = [Comparison("q1", 0, SAME_PROMPT, None, None, 0.25),  # identical
             Comparison("q2", 0, SAME_PROMPT, 3, 0.25, 0.25),  # at the bound: numerical (inclusive)
             Comparison("q3", 0, SAME_PROMPT, 3, 0.2501, 0.25),  # above: divergent
             Comparison("q4", 0, SAME_PROMPT, 0, None, 0.25),  # margin unknown: divergent
             Comparison("q5", 0, SAME_PROMPT, 1, 0.0, None),  # no bound measured: divergent
             Comparison("q1", 1, OWN_HISTORY, 2, 0.1, 0.25)]  # a later turn on its own history
    assert [c.verdict for c in cases] == [IDENTICAL, NUMERICAL, DIVERGENT, DIVERGENT, DIVERGENT, NUMERICAL]
    result = classify(cases, identical_to_run=1, noise_bound={"value": 0.25})
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["pairs"] == 6 and data["equal_to_vanilla"] == pytest.approx(1 / 6)
    judged = data["equality"]
    assert (judged[IDENTICAL], judged[NUMERICAL], judged[DIVERGENT], judged["own_history"]) == (1, 2, 3, 1)
    assert [(d["question_id"], d["turn"]) for d in judged["differing"]] == [
        ("q1", 1), ("q2", 0), ("q3", 0), ("q4", 0), ("q5", 0)]  # sorted, identical ones left out
    with pytest.raises(ValueError, match="no \\(question_id, turn\\)"):
        classify([], 0, None)


# ---- the calibration -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [TREE16, CHAIN5])
def test_calibration_trees_hold_the_line_as_one_path(shape):
    gen = torch.Generator().manual_seed(0)
    for line in ([7], [7, 8], [7, 8, 9, 10]):
        tree, path = _calibration_tree(line, shape, 320, gen)
        assert tree.size == max(shape.nodes, len(line)) and tree.is_chain == shape.chain
        assert [tree.tokens[n] for n in path] == line and path[0] == 0
        assert all(tree.parents[path[i]] == path[i - 1] for i in range(1, len(path)))


def test_noise_bound_follows_the_dtype():
    """Rounding noise: float64 at its epsilon, float32 below 1e-3, bfloat16 above float32's."""
    found = {}
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        target = Target(tiny_model(0, dtype), (2,))
        bounds = measure_noise_bounds(target, PROMPTS, [TREE16, CHAIN5], tokens=24)
        assert set(bounds) == {"tree:16", "chain:5"}
        b = bounds["tree:16"]
        assert b.positions == 2 * 23 and b.median <= b.value <= b.maximum and b.dtype == str(dtype)[6:]
        found[dtype] = max(x.value for x in bounds.values())
    assert found[torch.float64] < 1e-12 and found[torch.float32] < 1e-3
    assert found[torch.bfloat16] > 10 * found[torch.float32]


class NoisyScoring(Target):
    """A target whose tree forwards are off by up to ±0.05 per logit: the calibration must see it."""

    def score(self, tree):
        out = super().score(tree)
        if tree.size == 1:
            return out  # vanilla's one-row steps stay exact
        noise = (torch.rand(out.logits.shape, generator=torch.Generator().manual_seed(tree.tokens[0]),
                            dtype=out.logits.dtype) - 0.5) * 0.1
        return TargetOutput(out.logits + noise, out.features)


def test_noise_bound_measures_the_scoring_noise():
    exact = measure_noise_bounds(Target(tiny_model(0, torch.float64), (2,)), PROMPTS, [TREE16], tokens=24)
    noisy = measure_noise_bounds(NoisyScoring(tiny_model(0, torch.float64), (2,)), PROMPTS, [TREE16], tokens=24)
    assert exact["tree:16"].value < 1e-12
    assert 0.05 < noisy["tree:16"].value <= 0.1  # |Δ(l_a − l_b)| of two ±0.05 errors


# ---- the judge -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded():
    return load_target("tiny-random", "float64", "cpu")


def _record(loaded, method, question, turn, ids):
    text = loaded.tokenizer.decode(list(ids), skip_special_tokens=True)
    return SampleRecord(method, question.question_id, turn, question.category, 0, tuple(ids), text, len(ids), 1.0,
                        0.1, 0, (), "length")


def _vanilla(loaded, prompt, n=12):
    drafter = build_drafter(loaded.target, DrafterSettings("vanilla", TreeShape.parse("chain:1")))
    return generate(loaded.target, drafter, prompt, n, SamplingConfig(), generator_for(0),
                    Clock(torch.device("cpu"))).ids


def test_judge_compares_a_later_turn_on_its_own_history(loaded, tmp_path, monkeypatch):
    """Turn 0 of "m" differs from vanilla (a token changed by hand: a real divergence); its turn 1 is
    vanilla's own decode of m's history, so judged on its own prompt it is identical although it
    differs from the run's vanilla sample of turn 1."""
    suite = limit(load_suite("mtbench"), 1)
    question = suite.questions[0]
    tok = loaded.tokenizer
    samples = {}
    v0 = _vanilla(loaded, turn_prompt(tok, suite, question, 0, []))
    samples[("vanilla", question.question_id, 0)] = _record(loaded, "vanilla", question, 0, v0)
    v1 = _vanilla(loaded, turn_prompt(tok, suite, question, 1, [samples[("vanilla", question.question_id, 0)]
                                                                 .output_text.strip()]))
    samples[("vanilla", question.question_id, 1)] = _record(loaded, "vanilla", question, 1, v1)
    m0 = (*v0[:3], (v0[3] + 1) % 256 + 3, *v0[4:])
    samples[("m", question.question_id, 0)] = _record(loaded, "m", question, 0, m0)
    history = turn_prompt(tok, suite, question, 1, [samples[("m", question.question_id, 0)].output_text.strip()])
    m1 = _vanilla(loaded, history)
    samples[("m", question.question_id, 1)] = _record(loaded, "m", question, 1, m1)
    reruns = []

    def rerun(prompt):
        reruns.append(prompt)
        return _vanilla(loaded, prompt)

    bounds = noise_bounds({"m": TREE16}, loaded, suite, tmp_path)
    assert (tmp_path / "noise.json").exists()
    result = judge("m", samples, loaded, suite, bounds["tree:16"], rerun)
    assert reruns == [history]  # only the later turn whose history differs is re-run
    turn0, turn1 = result.comparisons
    assert (turn0.context, turn0.position, turn0.verdict) == (SAME_PROMPT, 3, DIVERGENT)
    assert turn0.margin > 1e-3  # a real margin, far above float64's noise
    assert (turn1.context, turn1.verdict) == (OWN_HISTORY, IDENTICAL)
    assert result.identical_to_run == (m1 == v1)
    # measured once: a second call (a resumed run) reads noise.json back instead of measuring again
    monkeypatch.setattr("coral_bench.run.judge.measure_noise_bounds", lambda *a, **k: pytest.fail("measured twice"))
    assert noise_bounds({"m": TREE16}, loaded, suite, tmp_path) == bounds
