"""The speculative loop is lossless: greedy output equals vanilla for every drafter (float64)."""

import pytest
import torch

from coral_bench.run.chat import render
from coral_bench.core.decode import generate
from coral_bench.core.drafter import DrafterSettings, generator_for
from coral_bench.drafters.registry import DRAFTERS, build_drafter
from coral_bench.core.records import STOP_EOS, STOP_LENGTH
from coral_bench.core.reference import GreedyReference
from coral_bench.core.sampling import SamplingConfig
from coral_bench.core.target import Target, TargetError
from coral_bench.run.tiny import tiny_cycling_model, tiny_model
from coral_bench.core.tree import TreeShape

GREEDY = SamplingConfig()
PROMPTS = ["Tell me a story about a cat.", "What is 2 + 2? Explain step by step.", "abc abc abc abc"]


def _run(target, clock, name, prompt_ids, max_new=40, tree=None, reference=None, seed=0):
    """``reference``: vanilla's output ids for this prompt (oracle drafters)."""
    settings = DrafterSettings(name=name, tree=tree or DRAFTERS[name].default_tree, seed=seed)
    drafter = build_drafter(target, settings)
    greedy = None
    if reference is not None:
        greedy = GreedyReference(target)
        greedy.add(prompt_ids, reference)
    return generate(target, drafter, prompt_ids, max_new, GREEDY, generator_for(seed), clock,
                    reserve=settings.tree.max_nodes, reference=greedy)


@pytest.fixture(params=PROMPTS)
def prompt_ids(request, tokenizer):
    return render(tokenizer, [request.param], [], None)


def test_vanilla_equals_hf_generate(target64, model64, clock, prompt_ids):
    van = _run(target64, clock, "vanilla", prompt_ids, max_new=30)
    hf = model64.generate(torch.tensor([prompt_ids]), max_new_tokens=30, do_sample=False)
    assert list(van.ids) == hf[0, len(prompt_ids):].tolist()
    assert all(c.accepted == 0 and c.emitted == 1 for c in van.cycles)  # vanilla τ is exactly 1
    assert len(van.cycles) == len(van.ids) - 1  # the prefill's token is in no cycle


def test_vanilla_stops_on_eos_like_hf(tokenizer, clock):
    # A model whose greedy output reaches EOS early: bias the head toward EOS after a few tokens.
    model = tiny_model(seed=3, dtype=torch.float64)
    with torch.no_grad():
        model.lm_head.weight[2] += 0.6 * model.lm_head.weight[65]  # EOS follows token 65-like features
    target = Target(model, (2,))
    for text in PROMPTS:
        ids = render(tokenizer, [text], [], None)
        van = _run(target, clock, "vanilla", ids, max_new=200)
        hf = model.generate(torch.tensor([ids]), max_new_tokens=200, do_sample=False, eos_token_id=2, pad_token_id=2)
        assert list(van.ids) == hf[0, len(ids):].tolist()
        if van.stop_reason == STOP_EOS:
            return
    pytest.fail("no prompt stopped on EOS: the fixture no longer exercises that case")


# Trained drafters (eagle2, hass, coral) share the `eagle` class, tested here with random weights.
@pytest.mark.parametrize("name", sorted(n for n, e in DRAFTERS.items() if not e.needs_checkpoint))
@pytest.mark.parametrize("tree", ["chain:3", "top_k=3,depth=2,total_tokens=8"])
def test_greedy_output_equals_vanilla(target64, clock, prompt_ids, name, tree):
    van = _run(target64, clock, "vanilla", prompt_ids)
    spec = _run(target64, clock, name, prompt_ids, tree=TreeShape.parse(tree), reference=van.ids)
    assert spec.ids == van.ids
    assert spec.stop_reason == van.stop_reason
    assert sum(c.emitted for c in spec.cycles) + 1 == len(spec.ids)


@pytest.mark.parametrize("tree,levels", [("chain:4", 4), ("top_k=3,depth=2,total_tokens=9", 3)])
def test_oracle_accepts_everything(target64, clock, prompt_ids, tree, levels):
    van = _run(target64, clock, "vanilla", prompt_ids, max_new=41)
    spec = _run(target64, clock, "oracle", prompt_ids, max_new=41, tree=TreeShape.parse(tree), reference=van.ids)
    assert spec.ids == van.ids
    full = [c for c in spec.cycles if c.emitted == c.accepted + 1]  # all but a truncated last cycle
    assert all(c.accepted == levels for c in spec.cycles[:-1])
    assert all(c.emitted == levels + 1 for c in full[:-1])
    if tree.startswith("top_k"):
        assert all(c.nodes == 9 for c in spec.cycles)  # padded to the shape's verification cost


def test_noisy_oracle_exercises_every_commit_path(target64, clock, tokenizer):
    """Many seeds: branching commits, off-chain paths, EOS and the cap inside an accepted chunk."""
    model = tiny_model(seed=3, dtype=torch.float64)
    with torch.no_grad():
        model.lm_head.weight[2] += 0.6 * model.lm_head.weight[65]
    eos_target = Target(model, (2,))
    seen = set()
    for seed in range(12):
        for target, text in ((target64, PROMPTS[seed % 3]), (eos_target, PROMPTS[seed % 3])):
            ids = render(tokenizer, [text], [], None)
            max_new = 17 + seed
            van = _run(target, clock, "vanilla", ids, max_new=max_new)
            spec = _run(target, clock, "noisy-oracle", ids, max_new=max_new, reference=van.ids, seed=seed,
                        tree=TreeShape.parse("top_k=3,depth=4,total_tokens=20"))
            assert spec.ids == van.ids and spec.stop_reason == van.stop_reason
            last = spec.cycles[-1]
            if last.emitted < last.accepted + 1:
                seen.add("cut " + spec.stop_reason)
            if any(c.nodes > c.depth + 1 and c.accepted > 0 for c in spec.cycles):
                seen.add("branching commit")
            if any(c.accepted == c.depth and c.depth > 0 for c in spec.cycles):
                seen.add("bonus at a leaf")
    assert {"cut " + STOP_EOS, "cut " + STOP_LENGTH, "branching commit", "bonus at a leaf"} <= seen


def test_prompt_longer_than_context_is_refused(tokenizer, clock):
    target = Target(tiny_model(max_position_embeddings=64), (2,))
    with pytest.raises(TargetError, match="exceeds the target's context"):
        _run(target, clock, "vanilla", list(range(3, 60)), max_new=10)


@pytest.mark.parametrize("tree", ["chain:3", "top_k=3,depth=2,total_tokens=8"])
def test_early_exit_at_full_depth_accepts_several_tokens_and_equals_vanilla(target64, clock, prompt_ids, tree):
    """early-exit:N with N = every layer drafts the target's own greedy tokens through the real early-exit
    code (its own forwards, tree building and cache): multi-token acceptance, and still vanilla's output."""
    van = _run(target64, clock, "vanilla", prompt_ids)
    settings = DrafterSettings(name="early-exit", tree=TreeShape.parse(tree), checkpoint=str(target64.num_layers))
    drafter = build_drafter(target64, settings)
    spec = generate(target64, drafter, prompt_ids, 40, GREEDY, generator_for(0), clock, reserve=settings.tree.max_nodes)
    accepted = [c.accepted for c in spec.cycles]
    assert sum(accepted) / len(accepted) > 1.5  # cannot pass by rejecting every draft
    assert spec.ids == van.ids and spec.stop_reason == van.stop_reason


def _cycling_target(tokenizer) -> Target:
    return Target(tiny_cycling_model(tokenizer), (2,), name="tiny64-cycling")


@pytest.mark.parametrize("max_new", [40, 37])  # 37: the max_new_tokens cut falls inside an accepted chunk
def test_prompt_lookup_accepts_several_tokens_and_equals_vanilla(tokenizer, clock, max_new):
    target = _cycling_target(tokenizer)
    for text in ("Repeat after me: abcdabcdab", "Tell me about abcd"):
        ids = render(tokenizer, [text], [], None)
        van = _run(target, clock, "vanilla", ids, max_new=max_new)
        spec = _run(target, clock, "prompt-lookup", ids, max_new=max_new, tree=TreeShape.parse("chain:4"))
        accepted = [c.accepted for c in spec.cycles]
        assert sum(accepted) / len(accepted) > 1.5, text  # drafts accepted, several per cycle
        assert spec.ids == van.ids and spec.stop_reason == van.stop_reason, text
        assert len(spec.ids) == max_new
