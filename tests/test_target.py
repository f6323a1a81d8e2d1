"""Tree scoring and cache commit against brute-force forwards (float64, tiny model)."""

import random

import pytest
import torch

from coral_bench.core.target import Target, TargetError
from coral_bench.core.tree import DraftTree


def _random_tree(rng: random.Random, n: int) -> DraftTree:
    tokens, parents = [rng.randrange(3, 300)], [-1]
    while len(tokens) < n:
        p = rng.randrange(len(tokens))
        tok = rng.randrange(3, 300)
        if all(not (parents[i] == p and tokens[i] == tok) for i in range(1, len(tokens))):
            tokens.append(tok)
            parents.append(p)
    return DraftTree(tuple(tokens), tuple(parents))


def _fresh_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize("seed", range(4))
def test_score_matches_brute_force_and_commit_keeps_cache_consistent(model64, seed):
    rng = random.Random(seed)
    target = Target(model64, (2,))
    context = [rng.randrange(3, 300) for _ in range(rng.randrange(5, 30))]
    target.prefill(torch.tensor(context))
    for cycle in range(5):
        tree = _random_tree(rng, rng.randrange(1, 12)) if cycle % 2 else DraftTree.chain(
            rng.randrange(3, 300), [rng.randrange(3, 300) for _ in range(rng.randrange(0, 5))])
        scored = target.score(tree)
        for node in range(tree.size):
            path_tokens = [tree.tokens[i] for i in tree.path_to(node)]
            assert torch.allclose(scored.logits[node], _fresh_logits(model64, context + path_tokens), atol=1e-9)
        leaf = rng.choice(tree.leaf_paths)
        path = leaf[: rng.randrange(1, len(leaf) + 1)]
        target.commit(path)
        context += [tree.tokens[i] for i in path]
        assert target.cache_len == len(context)
    probe = target.score(DraftTree.root_only(7))
    assert torch.allclose(probe.logits[0], _fresh_logits(model64, context + [7]), atol=1e-9)


def _tree_case(model64):
    target = Target(model64, (2,))
    context = list(range(10, 30))
    target.prefill(torch.tensor(context))
    tree = DraftTree(tokens=(5, 7, 9, 11, 13), parents=(-1, 0, 0, 1, 2))
    refs = torch.stack([_fresh_logits(model64, context + [tree.tokens[i] for i in tree.path_to(n)])
                        for n in range(tree.size)])
    return target, tree, refs, len(context)


def test_canary_one_zero_float_mask_gives_wrong_logits(model64):
    """If transformers ever treated a 1/0 float mask as a boolean one, our additive mask would be the
    only correct choice left unproven: this guards the 4-D mask passthrough (docs/design.md §3)."""
    target, tree, refs, prefix = _tree_case(model64)
    good = target._tree_mask(tree, prefix)
    one_zero = (good == 0).to(good.dtype)  # 1 = allowed, 0 = masked: wrong for an additive mask
    with torch.no_grad():
        out = model64.model(input_ids=torch.tensor([tree.tokens]), attention_mask=one_zero,
                            position_ids=tree.position_ids(prefix).view(1, -1), cache=target._cache, use_cache=True)
    wrong = model64.lm_head(out.last_hidden_state[0])
    assert not torch.allclose(wrong, refs, atol=1e-6)


def test_canary_missing_position_ids_gives_wrong_logits(model64):
    target, tree, refs, prefix = _tree_case(model64)
    with torch.no_grad():
        out = model64.model(input_ids=torch.tensor([tree.tokens]), attention_mask=target._tree_mask(tree, prefix),
                            cache=target._cache, use_cache=True)
    assert not torch.allclose(model64.lm_head(out.last_hidden_state[0]), refs, atol=1e-6)


def test_misuse_is_refused(model64):
    target = Target(model64, (2,))
    with pytest.raises(TargetError):
        target.score(DraftTree.root_only(5))
    target.prefill(torch.tensor([5, 6, 7]))
    with pytest.raises(TargetError):
        target.commit((0,))
    target.score(DraftTree.chain(5, [6]))
    with pytest.raises(TargetError):
        target.score(DraftTree.root_only(5))
