"""T > 0 end to end: the first tokens of a speculative decode — drafting, tree verification and the
KV-cache commit together — are distributed as sampling the target token by token (docs/methods.md §4).

The exact joint of the first NEW tokens is enumerated from fresh target forwards (sampling top-k 3
keeps it to at most 27 cells); each drafter's decode is sampled over many seeds and compared with it
by a Pearson chi-square test at a ~1e-6 level. The same test fails for a deliberately broken verifier,
which shows it has the power to see a biased acceptance."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from coral_bench.core import decode
from coral_bench.core.decode import generate
from coral_bench.core.drafter import DrafterSettings, generator_for
from coral_bench.core.reference import GreedyReference
from coral_bench.core.sampling import SamplingConfig, warp
from coral_bench.core.tree import TreeShape, Verdict
from coral_bench.core.verify import verify
from coral_bench.drafters.registry import build_drafter
from coral_bench.run.chat import render
from test_verify import _chi2, _chi2_bound

CFG = SamplingConfig(temperature=1.0, top_k=3)
NEW = 3  # the prefill's token, then one or more cycles
SEEDS = 1500
TREE = "top_k=3,depth=2,total_tokens=8"


@pytest.fixture
def prompt(tokenizer):
    return render(tokenizer, ["Tell me a story about a cat."], [], None)


@torch.inference_mode()
def _exact_joint(target, prompt: list[int]) -> dict[tuple[int, ...], float]:
    """P(first NEW tokens), a sequence ending early at EOS; plain forwards of the whole context."""
    joint: dict[tuple[int, ...], float] = {}
    eos = set(target.eos_token_ids)

    def walk(tokens: tuple[int, ...], p: float) -> None:
        if len(tokens) == NEW or (tokens and tokens[-1] in eos):
            joint[tokens] = joint.get(tokens, 0.0) + p
            return
        logits = target.model(torch.tensor([prompt + list(tokens)])).logits[0, -1]
        probs = warp(logits, CFG)
        for t in torch.nonzero(probs).flatten().tolist():
            walk(tokens + (t,), p * float(probs[t]))

    walk((), 1.0)
    return joint


def _sampled(target, clock, prompt, name: str, checkpoint: str | None = None) -> Counter:
    settings = DrafterSettings(name=name, tree=TreeShape.parse(TREE), checkpoint=checkpoint)
    drafter = build_drafter(target, settings)
    counts: Counter = Counter()
    accepted = 0
    # one reference for all seeds: it caches the greedy continuations it computes (a few contexts here)
    reference = GreedyReference(target) if name in ("oracle", "noisy-oracle") else None
    for seed in range(SEEDS):
        gen = generate(target, drafter, prompt, NEW, CFG, generator_for(seed), clock,
                       reserve=settings.tree.max_nodes, reference=reference)
        counts[tuple(gen.ids)] += 1
        accepted += sum(c.accepted for c in gen.cycles)
    assert accepted > SEEDS // 4, f"{name}: too few drafted tokens accepted to exercise acceptance"
    return counts


@pytest.mark.parametrize("name,checkpoint", [("oracle", None), ("noisy-oracle", None), ("early-exit", "2")])
def test_speculative_sampling_keeps_the_target_distribution(target64, clock, prompt, name, checkpoint):
    joint = _exact_joint(target64, prompt)
    stat, df = _chi2(_sampled(target64, clock, prompt, name, checkpoint), joint, SEEDS)
    assert stat < _chi2_bound(df), f"{name}: chi-square {stat:.1f} on {df} df"


def _accept_the_first_root_child(tree, logits, cfg, generator=None) -> Verdict:
    """A broken verifier: where every root child is rejected, it keeps the first one anyway."""
    verdict = verify(tree, logits, cfg, generator)
    kids = tree.children[0]
    if kids and verdict.path == (0,):
        return Verdict(path=(0, kids[0]), tokens=(tree.tokens[kids[0]], verdict.tokens[0]))
    return verdict


def test_a_broken_verifier_fails_the_same_test(target64, clock, prompt, monkeypatch):
    monkeypatch.setattr(decode, "verify", _accept_the_first_root_child)
    joint = _exact_joint(target64, prompt)
    stat, df = _chi2(_sampled(target64, clock, prompt, "oracle"), joint, SEEDS)
    assert stat > _chi2_bound(df), f"chi-square {stat:.1f} on {df} df: the test cannot see a biased verifier"
