"""Partitions of the vocabulary into N groups for CORAL's routed LM head (docs/methods.md §6).

A :class:`VocabGrouping` lists every token id once, group by group, so that each group is one
contiguous block of rows of the head once the head is laid out in group order
(:class:`~coral_bench.drafters.draft_heads.HeadLayout`). Rules: ``contiguous`` (token-id ranges: the
target's own head serves, no copy), ``frequency`` (ranked by training-data frequency: group 0 holds
the most frequent tokens) and ``cluster`` (balanced spherical k-means of the LM-head rows). Groups
have balanced sizes, so that every group costs V/N head rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from coral_bench.core.drafter import DrafterError

PARTITIONS = ("contiguous", "frequency", "cluster")
G2T_KEY = "router.g2t"  # [V] int64: token ids in head-layout order, group by group
STARTS_KEY = "router.group_starts"  # [N + 1] int64: group g = g2t[starts[g]:starts[g + 1]]
COUNTS_KEY = "vocab.counts"  # [V] int64: token frequency in the training data (loss tokens)
CLUSTER_ITERATIONS = 10


def balanced_starts(vocab: int, groups: int) -> tuple[int, ...]:
    """Group boundaries [N + 1] with sizes differing by at most one (the larger groups first)."""
    if not 1 <= groups <= vocab:
        raise DrafterError(f"router_groups must be in 1…{vocab} (the vocabulary), not {groups}")
    base, extra = divmod(vocab, groups)
    starts = [0]
    for g in range(groups):
        starts.append(starts[-1] + base + (1 if g < extra else 0))
    return tuple(starts)


@dataclass(frozen=True)
class VocabGrouping:
    """A partition of the vocabulary into N groups, each a contiguous block of the head layout.

    ``g2t`` (group → token, like EAGLE-3's ``d2t``) lists every token id once, group by group; group g
    holds ``g2t[starts[g]:starts[g + 1]]`` (ascending ids within a group).
    """

    rule: str  # contiguous | frequency | cluster
    g2t: torch.Tensor = field(repr=False)  # [V] int64, a permutation of 0…V−1
    starts: tuple[int, ...]  # [N + 1] 0 = starts[0] < … < starts[N] = V
    details: dict[str, Any] = field(default_factory=dict)  # how it was built (seed, iterations, counts)

    def __post_init__(self) -> None:
        v = int(self.g2t.numel())
        problems = []
        if self.rule not in PARTITIONS:
            problems.append(f"rule must be one of {PARTITIONS}, not {self.rule!r}")
        if self.g2t.dim() != 1 or self.g2t.dtype != torch.int64:
            problems.append(f"g2t must be a 1-D int64 tensor (got {tuple(self.g2t.shape)} {self.g2t.dtype})")
        elif not torch.equal(torch.sort(self.g2t).values, torch.arange(v)):
            problems.append("g2t is not a permutation of the vocabulary: some token is in no group or in two")
        s = self.starts
        if len(s) < 2 or s[0] != 0 or s[-1] != v or any(b <= a for a, b in zip(s, s[1:])):
            problems.append(f"group starts must rise strictly from 0 to the vocabulary size {v} (every group non-empty)")
        if problems:
            raise DrafterError("bad vocabulary grouping: " + "; ".join(problems))

    @property
    def groups(self) -> int:
        return len(self.starts) - 1

    @property
    def vocab_size(self) -> int:
        return int(self.g2t.numel())

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.starts, self.starts[1:]))

    @cached_property
    def is_identity(self) -> bool:
        """g2t = 0…V−1: groups are id ranges, so the target's head can be used in place."""
        return torch.equal(self.g2t, torch.arange(self.vocab_size))

    @cached_property
    def group_of(self) -> torch.Tensor:  # [V] int64 token → group (t2g)
        out = torch.empty(self.vocab_size, dtype=torch.long)
        for g, (a, b) in enumerate(zip(self.starts, self.starts[1:])):
            out[self.g2t[a:b]] = g
        return out

    def tokens(self, group: int) -> torch.Tensor:  # [size] int64
        return self.g2t[self.starts[group] : self.starts[group + 1]]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The checkpoint tensors of this grouping."""
        return {G2T_KEY: self.g2t.clone(), STARTS_KEY: torch.tensor(self.starts, dtype=torch.long)}

    def describe(self) -> dict[str, Any]:
        sizes = self.sizes
        return {"rule": self.rule, "groups": self.groups, "vocab_size": self.vocab_size,
                "min_group_size": min(sizes), "max_group_size": max(sizes), **self.details}


def _ordered(rule: str, groups_of_ranked: list[torch.Tensor], details: dict[str, Any]) -> VocabGrouping:
    """A grouping from one id tensor per group (ids sorted inside each group)."""
    parts = [torch.sort(ids).values for ids in groups_of_ranked]
    starts = [0]
    for p in parts:
        starts.append(starts[-1] + int(p.numel()))
    return VocabGrouping(rule, torch.cat(parts).long(), tuple(starts), details)


def contiguous_grouping(vocab: int, groups: int) -> VocabGrouping:
    """Token-id ranges of balanced size: the target's head is used in place (views, no copy)."""
    return VocabGrouping("contiguous", torch.arange(vocab), balanced_starts(vocab, groups))


def frequency_grouping(counts: torch.Tensor, groups: int, source: str = "") -> VocabGrouping:  # counts [V]
    """Tokens ranked by training frequency (ties by id), cut into balanced groups: group 0 holds the
    V/N most frequent tokens, the last group the rarest. Equal sizes keep every group's head cost V/N."""
    vocab = int(counts.numel())
    starts = balanced_starts(vocab, groups)
    ranked = torch.sort(counts.long(), descending=True, stable=True).indices  # stable: ties keep id order
    parts = [ranked[a:b] for a, b in zip(starts, starts[1:])]
    total = int(counts.sum())
    mass = [int(counts[p].sum()) / max(total, 1) for p in parts]
    details = {"counts": source or "token counts", "counted_tokens": total,
               "group_mass": [round(m, 6) for m in mass]}
    return _ordered("frequency", parts, details)


def balanced_assign(sim: torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:  # sim [V, N], capacity [N] -> [V]
    """Each row to one column, column c taking exactly capacity[c] rows (Σ capacity = V), greedily by
    similarity: every unassigned row proposes to its best column with room left; a column accepts its
    best proposers up to its room. At least one column fills or every proposer is placed per round."""
    v, n = sim.shape
    if int(capacity.sum()) != v:
        raise ValueError("capacities must add up to the rows")
    assign = torch.full((v,), -1, dtype=torch.long)
    room = capacity.clone().long()
    while True:
        free = (assign < 0).nonzero().flatten()
        if free.numel() == 0:
            return assign
        s = sim[free].masked_fill((room == 0)[None, :], float("-inf"))
        score, choice = s.max(dim=1)
        order = torch.sort(score, descending=True, stable=True).indices
        order = order[torch.sort(choice[order], stable=True).indices]  # by column, best first within one
        col = choice[order]
        first = torch.searchsorted(col, col, side="left")  # first position of each column's run
        rank = torch.arange(col.numel()) - first
        accept = order[rank < room[col]]
        assign[free[accept]] = choice[accept]
        room -= torch.bincount(choice[accept], minlength=n)


def cluster_grouping(head: torch.Tensor, groups: int, seed: int = 0,
                     iterations: int = CLUSTER_ITERATIONS) -> VocabGrouping:  # head [V, H]
    """Balanced spherical k-means of the LM-head rows (tokens whose rows point the same way get
    correlated logits): seeded initial centroids = N distinct rows, then ``iterations`` rounds of
    balanced assignment (:func:`balanced_assign`) and centroid = normalised member mean."""
    vocab = head.shape[0]
    starts = balanced_starts(vocab, groups)
    capacity = torch.tensor([b - a for a, b in zip(starts, starts[1:])])
    x = F.normalize(head.detach().to("cpu", torch.float32), dim=1, eps=1e-12)
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(vocab, generator=gen)[:groups]]
    assign = balanced_assign(x @ centroids.T, capacity)
    for _ in range(iterations):
        sums = torch.zeros(groups, x.shape[1]).index_add_(0, assign, x)
        centroids = F.normalize(sums, dim=1, eps=1e-12)
        assign = balanced_assign(x @ centroids.T, capacity)
    parts = [(assign == g).nonzero().flatten() for g in range(groups)]
    parts.sort(key=lambda p: int(p.min()))  # groups in order of their smallest id: deterministic layout
    return _ordered("cluster", parts, {"seed": seed, "iterations": iterations,
                                       "metric": "cosine of LM-head rows, balanced sizes"})


def make_grouping(rule: str, groups: int, *, vocab: int, head: torch.Tensor | None = None,
                  counts: torch.Tensor | None = None, seed: int = 0, source: str = "") -> VocabGrouping:
    if rule == "contiguous":
        return contiguous_grouping(vocab, groups)
    if rule == "frequency":
        if counts is None:
            raise DrafterError("the frequency partition needs token counts from the training data")
        return frequency_grouping(counts, groups, source)
    if rule == "cluster":
        if head is None:
            raise DrafterError("the cluster partition needs the LM head")
        return cluster_grouping(head, groups, seed)
    raise DrafterError(f"unknown partition {rule!r}: choose from {', '.join(PARTITIONS)}")


def store_token_counts(store: str | Path, vocab: int) -> torch.Tensor:  # [V] int64
    """Loss-token frequencies of a feature store (``coral-bench gen-data``), reading only the ``ids``
    and ``loss_mask`` tensors of each shard (not the features). Used by ``@freq=STORE``."""
    from safetensors import safe_open

    folder = Path(store)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        shards = [folder / s["file"] for s in manifest["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DrafterError(f"{folder} is not a readable feature store ({err})") from None
    counts = torch.zeros(vocab, dtype=torch.long)
    for file in shards:
        try:
            with safe_open(str(file), framework="pt") as fh:
                ids, mask = fh.get_tensor("ids").long(), fh.get_tensor("loss_mask").bool()
        except Exception as err:  # safetensors raises several types for truncated files
            raise DrafterError(f"cannot read {file}: {err}") from None
        ids = ids[mask]
        if ids.numel() and int(ids.max()) >= vocab:
            raise DrafterError(f"{folder} holds token id {int(ids.max())}, beyond the target's vocabulary {vocab}")
        counts += torch.bincount(ids, minlength=vocab)
    return counts
