"""Draft trees and verification verdicts: the values that flow between drafter, target and verifier.

A tree holds nodes in topological order: node 0 is the root (the last decided token, not yet run
through the target), ``parents[i] < i`` for every other node, and sibling tokens are distinct.
A chain is a tree whose parents are ``(-1, 0, 1, 2, ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


class TreeError(ValueError):
    """A draft tree that breaks an invariant (a bug in the drafter that built it)."""


@dataclass(frozen=True)
class DraftTree:
    """Tokens proposed by a drafter, rooted at the last decided token.

    ``forwards`` is D, the number of sequential drafter forwards spent building the tree (docs/methods.md
    §1); drafters derive it with :func:`forwards_for_depth` or count it themselves.
    """

    tokens: tuple[int, ...]  # [N] token ids, tokens[0] = root
    parents: tuple[int, ...]  # [N] parent node index, parents[0] = -1
    forwards: int = 0  # D: sequential drafter forwards spent on this tree
    draft_logprobs: tuple[float, ...] | None = None  # [N] drafter log-prob of each node (root: 0.0)
    head_union: tuple[int, ...] = ()  # [≤ D] |∪ selected router groups| per drafter forward (routed heads, docs/methods.md §6)

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if n == 0 or len(self.parents) != n:
            raise TreeError(f"tree needs >= 1 node and one parent per node (tokens {n}, parents {len(self.parents)})")
        if self.parents[0] != -1:
            raise TreeError("node 0 must be the root (parent -1)")
        seen: set[tuple[int, int]] = set()
        for i in range(1, n):
            p = self.parents[i]
            if not 0 <= p < i:
                raise TreeError(f"node {i} has parent {p}: parents must precede their children")
            key = (p, self.tokens[i])
            if key in seen:
                raise TreeError(f"node {i} repeats token {self.tokens[i]} among the children of node {p}")
            seen.add(key)
        if self.draft_logprobs is not None and len(self.draft_logprobs) != n:
            raise TreeError("draft_logprobs must have one entry per node")

    @classmethod
    def root_only(cls, token: int) -> "DraftTree":
        """The one-node tree of plain autoregressive decoding."""
        return cls(tokens=(token,), parents=(-1,), forwards=0)

    @classmethod
    def chain(cls, root: int, drafted: list[int] | tuple[int, ...], forwards: int = 0) -> "DraftTree":
        """A line of drafted tokens after the root."""
        return cls(tokens=(root, *drafted), parents=tuple(range(-1, len(drafted))), forwards=forwards)

    @property
    def size(self) -> int:
        return len(self.tokens)

    @cached_property
    def depths(self) -> tuple[int, ...]:  # [N] root = 0
        d = [0] * self.size
        for i in range(1, self.size):
            d[i] = d[self.parents[i]] + 1
        return tuple(d)

    @property
    def depth(self) -> int:
        """Deepest level (0 for a root-only tree)."""
        return max(self.depths)

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        kids: list[list[int]] = [[] for _ in range(self.size)]
        for i in range(1, self.size):
            kids[self.parents[i]].append(i)
        return tuple(tuple(k) for k in kids)

    @cached_property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    @cached_property
    def ancestor_mask(self) -> torch.Tensor:  # [N, N] bool, [i, j] = j is i or an ancestor of i
        n = self.size
        mask = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            j = i
            while j >= 0:
                mask[i, j] = True
                j = self.parents[j]
        return mask

    def position_ids(self, prefix_len: int) -> torch.Tensor:  # [N] int64
        """Position of each node when the target already holds ``prefix_len`` tokens."""
        return torch.tensor(self.depths, dtype=torch.long) + prefix_len

    @cached_property
    def leaf_paths(self) -> tuple[tuple[int, ...], ...]:
        """Every root-to-leaf path as node indices, root first."""
        return tuple(self.path_to(i) for i in range(self.size) if not self.children[i])

    def path_to(self, node: int) -> tuple[int, ...]:
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return tuple(reversed(path))


def forwards_for_depth(expansions: int) -> int:
    """D for an EAGLE-style tree: the first forward plus one per expansion (docs/methods.md §1)."""
    return expansions + 1


@dataclass(frozen=True)
class Verdict:
    """What verification decided for one tree.

    ``path`` lists the accepted nodes, root first (``path[0] == 0``); ``bonus`` is the token the
    target contributes after the last accepted node. The emitted tokens are the accepted draft
    tokens followed by the bonus (before any cut at EOS or ``max_new_tokens``, done by the loop).
    """

    path: tuple[int, ...]  # accepted node indices, root first
    tokens: tuple[int, ...]  # emitted token ids: accepted draft tokens + bonus

    @property
    def accepted(self) -> int:
        return len(self.path) - 1

    @property
    def bonus(self) -> int:
        return self.tokens[-1]


@dataclass(frozen=True)
class TreeShape:
    """How big a tree a drafter may build (docs/methods.md §3).

    ``chain`` trees draft ``depth`` tokens in a line. ``dynamic`` (EAGLE-2) trees expand ``depth``
    times (so depth + 1 levels of drafted tokens), keep ``top_k`` children per node and the global
    ``top_k`` frontier, and verify ``total_tokens`` nodes including the root.
    """

    kind: str  # "chain" or "dynamic"
    depth: int
    top_k: int = 1
    total_tokens: int = 0  # dynamic trees only

    def __post_init__(self) -> None:
        if self.kind not in ("chain", "dynamic"):
            raise TreeError(f"tree kind must be chain or dynamic, not {self.kind!r}")
        if self.depth < 1 or self.top_k < 1:
            raise TreeError("tree depth and top_k must be >= 1")
        if self.kind == "dynamic" and self.total_tokens < 2:
            raise TreeError("a dynamic tree needs total_tokens >= 2 (the root and one draft)")

    @property
    def levels(self) -> int:
        """Levels of drafted tokens: the longest acceptable draft."""
        return self.depth if self.kind == "chain" else self.depth + 1

    @property
    def max_nodes(self) -> int:
        """Nodes verified, root included: the context reserve for one cycle."""
        return self.depth + 1 if self.kind == "chain" else self.total_tokens

    def describe(self) -> str:
        if self.kind == "chain":
            return f"chain:{self.depth}"
        return f"top_k={self.top_k},depth={self.depth},total_tokens={self.total_tokens}"

    @classmethod
    def parse(cls, text: str) -> "TreeShape":
        """``chain:N`` or ``top_k=K,depth=D,total_tokens=T`` (any order; all three keys required)."""
        text = text.strip()
        try:
            if text.startswith("chain:"):
                return cls(kind="chain", depth=int(text.split(":", 1)[1]))
            parts = dict(p.split("=", 1) for p in text.split(",") if p)
            unknown = set(parts) - {"top_k", "depth", "total_tokens"}
            if unknown or len(parts) != 3:
                raise TreeError("")
            return cls(kind="dynamic", top_k=int(parts["top_k"]), depth=int(parts["depth"]),
                       total_tokens=int(parts["total_tokens"]))
        except (ValueError, KeyError) as err:
            detail = f": {err}" if str(err) else ""
            raise TreeError(f"bad tree {text!r}: use chain:N or top_k=K,depth=D,total_tokens=T{detail}") from None
