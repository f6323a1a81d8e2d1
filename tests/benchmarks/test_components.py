"""Component timings on the embedded target (docs/benchmarks.md): what one speculative cycle of
core/decode.py spends, piece by piece — target scoring by tree size, one drafter forward per draft
head, a whole drafting step, greedy verification, and the cache commit.

Every benchmark runs at the same ~256-token context and leaves the caches as it found them: state a
round changes is undone in the untimed ``setup`` of ``benchmark.pedantic`` (Target.discard, a
re-prefill after a commit, DraftKVCache.truncate, drafter.begin). Run with ``make benchmark``;
``make test`` deselects them (marker ``benchmark``).
"""

from __future__ import annotations

import pytest
import torch

from coral_bench.core.sampling import SamplingConfig
from coral_bench.core.tree import DraftTree, Verdict
from coral_bench.core.verify import verify

pytestmark = pytest.mark.benchmark

TREE_SIZES = (1, 4, 8, 16, 32)
HEADS = ("full", "subset6144", "routed")  # the keys of the drafters fixture (conftest.py HEADS)
ACCEPTED_AFTER_COMMIT = 2  # draft tokens accepted in the cycle before a "after_commit" drafting step


def _record(benchmark, embedded, group: str, **more) -> None:
    benchmark.group = group
    benchmark.extra_info.update(embedded.facts)
    benchmark.extra_info.update(more)


def _head_info(drafter) -> dict:
    head = drafter.info.head
    return {(k if k.startswith("head") else f"head_{k}"): v for k, v in head.items()
            if not isinstance(v, (list, dict, torch.Tensor))}


def synthetic_tree(root: int, n: int) -> DraftTree:
    """``n`` nodes in breadth-first order, four children per node (the CPU tree's top_k), arbitrary
    distinct tokens: the cost of a forward depends on n and the mask, not on the token values. n = 1 is
    vanilla's one-node tree (the plain causal path); n ≥ 4 is not a chain, so it runs the tree mask."""
    return DraftTree(tokens=(root, *(1000 + i for i in range(1, n))),
                     parents=(-1, *((i - 1) // 4 for i in range(1, n))))


# ---- target ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", TREE_SIZES, ids=[f"n={n}" for n in TREE_SIZES])
def test_target_score(benchmark, embedded, context, n):
    """Target.score of an n-node tree after the 256-token prompt; the tree is discarded before each round."""
    target = embedded.target
    tree = synthetic_tree(context.first_token, n)
    embedded.fresh()
    _record(benchmark, embedded, "target-score", nodes=n, tree_depth=tree.depth,
            path="causal (no mask)" if tree.is_chain else "tree mask")
    out = benchmark.pedantic(target.score, args=(tree,), setup=target.discard, rounds=20, warmup_rounds=3)
    target.discard()
    assert out.logits.shape[0] == n and target.cache_len == len(embedded.prompt)


# ---- drafter -----------------------------------------------------------------------------------
@pytest.mark.parametrize("head", HEADS)
def test_drafter_forward(benchmark, embedded, drafters, context, head):
    """One EAGLE-2 expansion as EagleDrafter._build_tree runs it: the drafter layer over the top_k frontier
    rows (after the 256 prompt slots, tree mask) and the draft head's top_k per row."""
    drafter = drafters[head]
    drafter.begin(context)
    cache, model = drafter.cache, drafter.model
    base = len(cache)
    k = drafter.settings.tree.top_k
    last = drafter._last_hidden  # [H] output of the last prompt slot (set by begin)
    with torch.inference_mode():  # as the drafter runs: every tensor here is an inference tensor
        frontier = drafter._top(last[None], k, [])[1][0]  # [k] level-1 tokens: the first frontier
    feats = last.expand(k, -1)[None]  # [1, k, H] each frontier node's parent output
    mask = torch.ones(k, base + k, dtype=torch.bool, device=last.device)
    mask[:, base:] = torch.eye(k, dtype=torch.bool, device=last.device)
    positions = torch.full((1, k), base, dtype=torch.long, device=last.device)

    @torch.inference_mode()
    def expansion():
        out = model(drafter._embed(frontier)[None], feats, positions, attn_mask=mask[None, None], cache=cache).hidden[0]
        return drafter._top(out, k, [])

    _record(benchmark, embedded, "drafter-forward", head=head, drafter=drafter.settings.name, rows=k, drafter_cache=base,
            **_head_info(drafter))
    logprobs, tokens = benchmark.pedantic(expansion, setup=lambda: cache.truncate(base), rounds=50,
                                         warmup_rounds=5)
    cache.truncate(base)
    assert tokens.shape == (k, k)


def _after_commit(embedded, drafter, context):
    """A verdict accepting ACCEPTED_AFTER_COMMIT tokens of the drafter's own first tree, and its scores."""
    tree = drafter.propose(context.first_token)
    embedded.restore()
    scored = embedded.target.score(tree)
    embedded.target.discard()
    path = max(tree.leaf_paths, key=len)[: ACCEPTED_AFTER_COMMIT + 1]
    bonus = int(scored.logits[path[-1]].argmax())
    return Verdict(path=path, tokens=(*(tree.tokens[i] for i in path[1:]), bonus)), scored


@pytest.mark.parametrize("when", ["after_begin", "after_commit"])
@pytest.mark.parametrize("head", HEADS)
def test_draft_step(benchmark, embedded, drafters, context, head, when):
    """drafter.propose with the drafter's default tree (top_k=4, depth=3, 16 nodes). after_begin: the first
    cycle of a sample; after_commit: a later cycle, which first runs the drafter over the accepted slots."""
    drafter = drafters[head]
    drafter.begin(context)
    if when == "after_begin":
        root, accepted = context.first_token, 0
        setup = None  # propose() leaves nothing behind (tree entries are truncated from the drafter cache)
    else:
        verdict, scored = _after_commit(embedded, drafter, context)
        root, accepted = verdict.bonus, verdict.accepted

        def setup():
            drafter.begin(context)
            drafter.commit(verdict, scored)

    _record(benchmark, embedded, "draft-step", head=head, drafter=drafter.settings.name, when=when,
            tree=drafter.settings.tree.describe(),
            accepted_before=accepted,
            **_head_info(drafter))
    tree = benchmark.pedantic(drafter.propose, args=(root,), setup=setup, rounds=25, warmup_rounds=3)
    assert tree.size == drafter.settings.tree.total_tokens


# ---- verification and commit ------------------------------------------------------------------
@pytest.fixture(scope="module")
def scored_tree(embedded, drafters, context):
    """The full-head drafter's 16-node tree after the prompt and the target's scores of it."""
    drafter = drafters["full"]
    drafter.begin(context)
    tree = drafter.propose(context.first_token)
    embedded.restore()
    scored = embedded.target.score(tree)
    embedded.target.discard()
    return tree, scored


def test_verify_greedy(benchmark, embedded, scored_tree):
    """core/verify.py verify at T = 0 on the scored 16-node tree (argmax of 16 x V logits, tree walk)."""
    tree, scored = scored_tree
    sampling = SamplingConfig()
    _record(benchmark, embedded, "verify", nodes=tree.size, logits_dtype=str(scored.logits.dtype).removeprefix("torch."))
    verdict = benchmark.pedantic(verify, args=(tree, scored.logits, sampling), rounds=50, iterations=20,
                                 warmup_rounds=2)
    assert verdict.path[0] == 0


@pytest.mark.parametrize("case", ["accepted0", "deepest"])
def test_target_commit(benchmark, embedded, scored_tree, case):
    """Target.commit of an accepted path of the scored 16-node tree: accepted0 keeps the root only (a
    crop); deepest keeps the longest root-to-leaf path (moves its entries in every layer, then crops).
    Each round re-prefills the prompt and re-scores the tree first (untimed)."""
    tree, _ = scored_tree
    target = embedded.target
    path = (0,) if case == "accepted0" else max(tree.leaf_paths, key=len)

    def setup():
        embedded.restore()
        target.score(tree)

    _record(benchmark, embedded, "commit", nodes=tree.size, kept=len(path), path=list(path),
            moves=any(node != i for i, node in enumerate(path)))
    benchmark.pedantic(target.commit, args=(path,), setup=setup, rounds=15, warmup_rounds=2)
    assert target.cache_len == len(embedded.prompt) + len(path)
    embedded.restore()
