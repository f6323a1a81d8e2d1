"""Verification (docs/methods.md §4): greedy on hand trees; rejection sampling against the exact target
distribution on synthetic trees; a mutated verifier must fail the same check; the warpers against
transformers' own."""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import pytest
import torch

from coral_bench.core.sampling import SamplingConfig, sample, warp
from coral_bench.core.tree import DraftTree, Verdict
from coral_bench.core.verify import expected_accepted, greedy, rejection, verify

V = 8  # small vocabulary: every cell of the two-token joint gets many samples
SAMPLES = 20_000
STOP = -1  # "no second token": the first token was not drafted, so the cycle ended after it


# ---------------------------------------------------------------- greedy

def _logits_with_argmax(best: list[int], vocab: int = V) -> torch.Tensor:  # [N, V]
    logits = torch.zeros(len(best), vocab)
    for i, b in enumerate(best):
        logits[i, b] = 1.0
    return logits


def test_greedy_branching_takes_the_matching_sibling():
    # root -> {3 (node 1), 5 (node 2)}; node 2 -> {1 (node 3), 4 (node 4)}; node 1 -> {6 (node 5)}
    tree = DraftTree(tokens=(0, 3, 5, 1, 4, 6), parents=(-1, 0, 0, 2, 2, 1))
    logits = _logits_with_argmax([5, 6, 4, 2, 7, 0])
    assert greedy(tree, logits) == Verdict(path=(0, 2, 4), tokens=(5, 4, 7))  # bonus from leaf 4's row


def test_greedy_no_match_emits_only_the_target_token():
    tree = DraftTree(tokens=(0, 3, 5), parents=(-1, 0, 0))
    v = greedy(tree, _logits_with_argmax([7, 1, 1]))
    assert v == Verdict(path=(0,), tokens=(7,)) and v.accepted == 0 and v.bonus == 7


def test_greedy_full_chain_gets_the_bonus_at_the_leaf():
    tree = DraftTree.chain(0, [4, 2, 6])
    v = greedy(tree, _logits_with_argmax([4, 2, 6, 1]))
    assert v == Verdict(path=(0, 1, 2, 3), tokens=(4, 2, 6, 1)) and v.accepted == 3


def test_greedy_root_only_is_argmax():
    assert greedy(DraftTree.root_only(9), _logits_with_argmax([3])).tokens == (3,)


def test_verify_dispatches_and_expected_accepted_is_the_greedy_count():
    tree = DraftTree(tokens=(0, 3, 5, 1), parents=(-1, 0, 0, 2))
    logits = _logits_with_argmax([5, 0, 1, 2])
    cfg = SamplingConfig()
    assert verify(tree, logits, cfg) == greedy(tree, logits)
    assert expected_accepted(tree, logits, cfg) == 2.0
    with pytest.raises(ValueError, match="Generator"):
        verify(tree, logits, SamplingConfig(temperature=1.0))


# ---------------------------------------------------------------- sampling: exact target joint

def _tree_from_ranks(logits: torch.Tensor, cfg: SamplingConfig, spec: dict[int, list[int]]) -> DraftTree:
    """A tree whose node i's children are the tokens at the given ranks of warp(logits[i]) (like
    a deterministic top-k drafter that is sometimes wrong). ``spec`` maps node -> ranks; nodes
    are numbered in creation order, which is topological."""
    tokens, parents = [0], [-1]
    for node in sorted(spec):
        order = torch.argsort(warp(logits[node], cfg), descending=True, stable=True).tolist()
        for r in spec[node]:
            tokens.append(order[r])
            parents.append(node)
    return DraftTree(tokens=tuple(tokens), parents=tuple(parents))


def _case(name: str) -> tuple[DraftTree, torch.Tensor, SamplingConfig]:
    g = torch.Generator().manual_seed({"plain": 1, "top_p_k": 3, "full_support": 4}[name])
    logits = 1.5 * torch.randn(10, V, generator=g, dtype=torch.float64)  # [N_max, V]
    if name == "plain":
        # three root children (ranks 0, 2, 1), grandchildren, a leaf at depth 3
        cfg = SamplingConfig(temperature=1.0, seed=11)
        spec = {0: [0, 2, 1], 1: [0, 1], 2: [1], 4: [0]}
    elif name == "top_p_k":
        # top-k 5 then top-p leave 4 root tokens; rank 6 is outside the support (p = 0, never
        # accepted); the two drafted root tokens in the support leave ~0.4 to the all-rejected branch
        cfg = SamplingConfig(temperature=1.2, top_k=5, top_p=0.85, seed=12)
        spec = {0: [1, 6, 0], 1: [0, 2], 3: [1]}
    else:
        # top_k = 2 and the root's children are exactly its support: the all-rejected branch
        # has zero mass, so the residual guard is exercised whenever rounding gets there
        cfg = SamplingConfig(temperature=1.3, top_k=2, seed=13)
        spec = {0: [1, 0], 1: [0, 1, 2], 2: [3]}
    tree = _tree_from_ranks(logits, cfg, spec)
    return tree, logits[: tree.size].clone(), cfg


def _target_joint(tree: DraftTree, logits: torch.Tensor, cfg: SamplingConfig) -> dict[tuple[int, int], float]:
    """Exact law of the first two emitted tokens under token-by-token target sampling.

    First token ~ warp(root). If it is drafted child x, the next token is drawn from the target at
    x: ~ warp(logits[x]). Otherwise the cycle ends after it (second = STOP)."""
    p_root = warp(logits[0], cfg).tolist()
    child_of = {tree.tokens[c]: c for c in tree.children[0]}
    joint: dict[tuple[int, int], float] = {}
    for a in range(V):
        if a in child_of:
            p_next = warp(logits[child_of[a]], cfg).tolist()
            for b in range(V):
                joint[(a, b)] = p_root[a] * p_next[b]
        else:
            joint[(a, STOP)] = p_root[a]
    return joint


def _reach(tree: DraftTree, logits: torch.Tensor, cfg: SamplingConfig) -> list[float]:
    """P(the walk reaches node v) = Π over v's path of p_parent(u)(token u), written out naively."""
    probs = warp(logits, cfg)  # [N, V]
    return [math.prod(float(probs[tree.parents[u], tree.tokens[u]]) for u in tree.path_to(v)[1:])
            for v in range(tree.size)]


def _chi2_bound(df: int, z: float = 4.75) -> float:
    """Upper ~1e-6 quantile of chi-square(df) (Wilson–Hilferty; no scipy needed)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts: Counter, expected: dict[tuple[int, int], float], n: int) -> tuple[float, int]:
    """Pearson statistic and its degrees of freedom; a sample in a zero-probability cell is inf."""
    live = [k for k, p in expected.items() if p > 0]
    if any(expected.get(k, 0.0) == 0.0 for k in counts):
        return math.inf, len(live) - 1
    stat = sum((counts[k] - n * expected[k]) ** 2 / (n * expected[k]) for k in live)
    return stat, len(live) - 1


Verifier = Callable[[DraftTree, torch.Tensor, SamplingConfig, torch.Generator], Verdict]


def _monte_carlo(verifier: Verifier, tree: DraftTree, logits: torch.Tensor, cfg: SamplingConfig):
    gen = cfg.generator()
    pairs: Counter = Counter()
    visits = [0] * tree.size
    accepted = []
    for _ in range(SAMPLES):
        v = verifier(tree, logits, cfg, gen)
        pairs[(v.tokens[0], v.tokens[1] if len(v.tokens) > 1 else STOP)] += 1
        for node in v.path:
            visits[node] += 1
        accepted.append(v.accepted)
    return pairs, visits, accepted


def _check(verifier: Verifier, tree: DraftTree, logits: torch.Tensor, cfg: SamplingConfig) -> dict:
    """Every statistic of the §4 test, with its bound; the caller asserts pass or fail."""
    pairs, visits, accepted = _monte_carlo(verifier, tree, logits, cfg)
    stat, df = _chi2(pairs, _target_joint(tree, logits, cfg), SAMPLES)
    mean = sum(accepted) / SAMPLES
    sd = math.sqrt(sum((a - mean) ** 2 for a in accepted) / (SAMPLES - 1))
    reach = _reach(tree, logits, cfg)
    # z-score of each node's visit frequency against its closed-form reach probability
    reach_z = max(abs(visits[v] - SAMPLES * r) / math.sqrt(SAMPLES * r * (1 - r) + 1e-12)
                  if 0 < r < 1 else (0.0 if visits[v] == SAMPLES * r else math.inf)
                  for v, r in enumerate(reach))
    return {
        "chi2": stat, "chi2_bound": _chi2_bound(df),
        "mean_accepted": mean, "expected_accepted": expected_accepted(tree, logits, cfg),
        "accepted_se": sd / math.sqrt(SAMPLES) + 1e-9,
        "reach_z": reach_z, "pairs": pairs,
    }


@pytest.mark.parametrize("name", ["plain", "top_p_k", "full_support"])
def test_rejection_emits_the_target_joint_and_the_exact_expected_acceptance(name):
    tree, logits, cfg = _case(name)
    r = _check(rejection, tree, logits, cfg)
    assert r["chi2"] < r["chi2_bound"], r
    assert abs(r["mean_accepted"] - r["expected_accepted"]) < 5 * r["accepted_se"], r
    # the walk reaches each node with the product of *unrenormalised* parent probabilities
    assert r["reach_z"] < 5, r
    root_children = {tree.tokens[c] for c in tree.children[0]}
    all_rejected = sum(n for (a, _), n in r["pairs"].items() if a not in root_children)
    if name == "full_support":
        assert all_rejected == 0  # the residual is empty: never reached
    else:
        assert all_rejected > 0.1 * SAMPLES  # the all-rejected branch is exercised, and it is right


def test_rejection_on_a_root_only_tree_is_vanilla_sampling():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, V, generator=g)
    cfg = SamplingConfig(temperature=0.9, top_p=0.9)
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(50):
        assert rejection(DraftTree.root_only(0), logits, cfg, a) == Verdict(
            path=(0,), tokens=(sample(warp(logits[0], cfg), b),))


def _rejection_without_renormalisation(tree: DraftTree, logits: torch.Tensor, cfg: SamplingConfig,
                                       generator: torch.Generator) -> Verdict:
    """A mutated copy of verify.rejection: accepts child x with p(x) instead of p(x) / residual
    mass. Everything else is identical. It must fail the same check."""
    tokens, children = tree.tokens, tree.children
    node, path, out = 0, [0], []
    while True:
        p = warp(logits[node], cfg)
        kids = children[node]
        if not kids:
            out.append(sample(p, generator))
            return Verdict(path=tuple(path), tokens=tuple(out))
        residual = p.clone()
        mass = float(residual.sum())
        accepted = -1
        for child in kids:
            x = tokens[child]
            px = float(residual[x])
            if px > 0.0:
                u = float(torch.rand((), generator=generator, device=generator.device))
                if u < px:  # MUTATION: was u * mass < px
                    accepted = child
                    break
                residual[x] = 0.0
                mass = float(residual.sum())
        if accepted < 0:
            out.append(sample(residual if mass > 1e-30 else p, generator))
            return Verdict(path=tuple(path), tokens=tuple(out))
        path.append(accepted)
        out.append(tokens[accepted])
        node = accepted


def test_a_verifier_without_renormalisation_fails_the_same_check():
    tree, logits, cfg = _case("plain")
    r = _check(_rejection_without_renormalisation, tree, logits, cfg)
    assert r["chi2"] > r["chi2_bound"], r
    assert abs(r["mean_accepted"] - r["expected_accepted"]) > 5 * r["accepted_se"], r
    assert r["reach_z"] > 5, r


def test_expected_accepted_matches_the_hand_formula():
    # root children a, b; a has child c: E = p0(a) + p0(b) + p0(a) * pa(c)
    tree = DraftTree(tokens=(0, 2, 5, 1), parents=(-1, 0, 0, 1))
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(4))
    cfg = SamplingConfig(temperature=0.8, top_k=5)
    p = warp(logits, cfg)
    want = float(p[0, 2] + p[0, 5] + p[0, 2] * p[1, 1])
    assert expected_accepted(tree, logits, cfg) == pytest.approx(want, rel=1e-6)
    assert expected_accepted(DraftTree.root_only(0), logits[:1], cfg) == 0.0


# ---------------------------------------------------------------- warp and config

@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.9), (0.6, 10, 0.8),
    (1.4, 3, 0.5), (0.5, 0, 0.05), (2.0, 1, 1.0), (1.0, 100, 0.95),
])
def test_warp_matches_transformers_warpers(temperature, top_k, top_p):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    logits = 3 * torch.randn(6, 64, generator=torch.Generator().manual_seed(7))  # [B, V] fp32
    ids = torch.zeros(6, 1, dtype=torch.long)
    scores = TemperatureLogitsWarper(temperature)(ids, logits)
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    want = scores.softmax(dim=-1)
    got = warp(logits, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p))
    assert got.dtype == torch.float32
    assert torch.equal(got > 0, want > 0)  # same support, token for token
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_top_p_keeps_the_smallest_set_reaching_top_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = lambda top_p: (warp(logits, SamplingConfig(temperature=1.0, top_p=top_p)) > 0).tolist()  # noqa: E731
    assert kept(0.75) == [True, True, False, False]
    assert kept(0.85) == [True, True, True, False]
    assert kept(0.01) == [True, False, False, False]  # always at least one token
    assert kept(1.0) == [True, True, True, True]


def test_warp_dtypes_and_greedy():
    logits = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    cfg = SamplingConfig(temperature=0.8, top_p=0.9)
    assert warp(logits.double(), cfg).dtype == torch.float64
    assert warp(logits.bfloat16(), cfg).dtype == torch.float32
    torch.testing.assert_close(warp(logits, cfg).sum(-1), torch.ones(3))
    one_hot = warp(logits, SamplingConfig())
    assert torch.equal(one_hot.argmax(-1), logits.argmax(-1)) and torch.equal(one_hot.sum(-1), torch.ones(3))


def test_sample_is_seeded():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    draw = lambda: [sample(p, g) for g in [torch.Generator().manual_seed(3)] for _ in range(20)]  # noqa: E731
    assert draw() == draw()
    assert sample(torch.tensor([0.0, 0.0, 1.0]), torch.Generator()) == 2


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top-k"), ({"top_k": 2.5}, "top-k"),
])
def test_sampling_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)


def test_sampling_config_defaults_are_greedy():
    assert SamplingConfig().is_greedy and not SamplingConfig(temperature=0.5).is_greedy
