"""``hybrid``: a trained EAGLE-style tree with prompt lookup's n-gram continuation merged in.

Production engines combine suffix matches with EAGLE because the two fail on different text: the
trained drafter generalises from its training data, the n-gram match copies what the prompt or the
answer already holds (code, quotes, lists, repeated names). Each cycle the EAGLE drafter builds its
tree and prompt lookup its chain (docs/methods.md §3); the chain is merged in as a path from the root
— where the tree already drafted its first tokens the path reuses those nodes, the rest is appended —
and the drafted leaves of lowest cumulative draft log-prob make room, so the tree keeps the node
budget of its shape (``total_tokens``; the chain is cut to the shape's levels). The target verifies
the merged tree like any other, so the output is vanilla's.

The head follows the checkpoint: a ``train-router`` checkpoint runs routed (as ``coral-router``),
``@vocab=V`` runs the frequency-subset head, anything else the full head. Without a path the shipped
``coral-router`` of the target is used.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from coral_bench.core.drafter import DraftContext, DrafterError, DrafterSettings
from coral_bench.core.target import Target, TargetOutput
from coral_bench.core.tree import DraftTree, TreeShape, Verdict
from .eagle import EagleDrafter, build_eagle, build_routed
from .options import MethodError, split_argument
from .prompt_lookup import PromptLookupDrafter


class HybridDrafter:
    """An :class:`EagleDrafter` whose tree also holds a :class:`PromptLookupDrafter` chain."""

    def __init__(self, eagle: EagleDrafter, lookup: PromptLookupDrafter, settings: DrafterSettings):
        self.eagle = eagle
        self.lookup = lookup
        self.settings = settings
        # what the runner and the latency profile read of an EAGLE-style drafter: its weights' record,
        # model and head (prompt lookup adds no forwards)
        self.info, self.model, self.head = eagle.info, eagle.model, eagle.head
        self._budget = settings.tree.max_nodes

    def parameter_count(self) -> int:
        return self.eagle.parameter_count()

    def begin(self, context: DraftContext) -> None:
        self.eagle.begin(context)
        self.lookup.begin(context)

    def propose(self, root: int) -> DraftTree:
        tree = self.eagle.propose(root)
        chain = self.lookup.propose(root).tokens[1:]
        return merge_chain(tree, chain, self._budget) if chain else tree

    def commit(self, verdict: Verdict, scored: TargetOutput) -> None:
        self.eagle.commit(verdict, scored)  # features of the accepted nodes, whichever source drafted them
        self.lookup.commit(verdict, scored)


def merge_chain(tree: DraftTree, chain: Sequence[int], budget: int) -> DraftTree:
    """``tree`` with ``chain`` (the tokens after the root) as a path from the root, in at most
    ``budget`` nodes (module docstring). Nodes keep their order, so parents still precede children;
    the chain's own nodes are never dropped. Appended nodes carry draft log-prob 0 (not the drafter's)."""
    tokens, parents = list(tree.tokens), list(tree.parents)
    logprobs = list(tree.draft_logprobs) if tree.draft_logprobs is not None else [0.0] * tree.size
    kids: list[dict[int, int]] = [{} for _ in tokens]
    for node in range(1, len(tokens)):
        kids[parents[node]][tokens[node]] = node
    node, on_chain = 0, {0}
    for token in chain[: max(0, budget - 1)]:
        child = kids[node].get(token)
        if child is None:  # the drafter did not propose it here: a new node under the chain's last one
            child = len(tokens)
            tokens.append(token)
            parents.append(node)
            logprobs.append(0.0)
            kids.append({})
            kids[node][token] = child
        on_chain.add(child)
        node = child
    alive = _drop_weakest_leaves(parents, logprobs, on_chain, len(tokens) - budget)
    index = {old: new for new, old in enumerate(alive)}
    return DraftTree(tokens=tuple(tokens[i] for i in alive),
                     parents=tuple(-1 if i == 0 else index[parents[i]] for i in alive),
                     forwards=tree.forwards, draft_logprobs=tuple(logprobs[i] for i in alive),
                     head_union=tree.head_union)


def _drop_weakest_leaves(parents: list[int], logprobs: list[float], keep: set[int], excess: int) -> list[int]:
    """The surviving node indices, in order, after removing ``excess`` leaves one at a time, each the
    leaf (outside ``keep``) of lowest cumulative log-prob; ties go to the later node."""
    n = len(parents)
    cumulative = [0.0] * n
    for node in range(1, n):
        cumulative[node] = cumulative[parents[node]] + logprobs[node]
    children = [0] * n
    for node in range(1, n):
        children[parents[node]] += 1
    dead: set[int] = set()
    for _ in range(max(0, excess)):
        leaves = [v for v in range(1, n) if v not in dead and v not in keep and not children[v]]
        if not leaves:
            break
        weakest = min(leaves, key=lambda v: (cumulative[v], -v))
        dead.add(weakest)
        children[parents[weakest]] -= 1
    return [v for v in range(n) if v not in dead]


def _has_router(checkpoint: str | None) -> bool:
    """Whether a checkpoint folder's config.json describes an LM-head router (read, never validated:
    the EAGLE loader validates whatever is built)."""
    if checkpoint is None:
        return False
    try:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    section = config.get("coral_bench") if isinstance(config, dict) else None
    return isinstance(section, dict) and section.get("router") is not None


def build_hybrid(target: Target, settings: DrafterSettings) -> HybridDrafter:
    """``hybrid[:PATH][@vocab=V|@router_k=K|@score=...][@tree=...]``; the head follows the checkpoint."""
    try:
        path, options = split_argument(settings.checkpoint)
    except MethodError as err:
        raise DrafterError(str(err)) from None
    routed = "vocab" not in options and _has_router(path)
    eagle = (build_routed if routed else build_eagle)(target, settings)
    # the n-gram chain is as long as the tree is deep (and leaves the root a place in the budget)
    chain = TreeShape(kind="chain", depth=max(1, min(settings.tree.levels, settings.tree.max_nodes - 1)))
    return HybridDrafter(eagle, PromptLookupDrafter(replace(settings, tree=chain)), settings)
