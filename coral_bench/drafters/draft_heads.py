"""Draft heads: the drafter's output features → top-k draft tokens and log-probs, computing logits
for fewer rows of the target's frozen LM head than the full head does (docs/methods.md §6).

- :class:`RoutedHead` — CORAL: the vocabulary is partitioned into N groups
  (:class:`~coral_bench.drafters.vocab_grouping.VocabGrouping`); a small
  :class:`~coral_bench.drafters.router.Router` reads each row's feature and picks its top
  ``router_k`` groups. Logits are computed per selected group, on that group's contiguous block of
  rows of the head, for the rows that chose it — never a per-row gather of weights — over the
  **union** of selected groups; tokens outside a row's groups get −inf and are never proposed. The
  cost is |∪ selected groups|·V/N head rows per forward (not k·V/N), so every forward reports |∪|
  (``HeadTop.union`` → ``DraftTree.head_union``).
- :class:`SubsetHead` — FR-Spec: the ``vocab`` most frequent training tokens, no router: V_sub head
  rows per forward, always.

Head layout (:class:`HeadLayout`): each group must be a contiguous block of head rows. ``contiguous``
groups are token-id ranges, so the blocks are views of the target's own head (no copy). ``frequency``
and ``cluster`` groups are scattered over the ids, so the head is copied once in group order (V·H
elements: 57 MB for SmolLM2 in bf16, 113 MB in fp32; ``HeadLayout.copy_bytes``). The subset head is
a copy of V_sub rows.

Scores (``score``): ``renorm`` (default) is the log-softmax over the tokens a row selected (it
inflates EAGLE-2 scores: the selected mass is renormalised to 1); ``calibrated`` is
log P_router(g) + log-softmax within group g, for a token of group g, with P_router the softmax over
all N router logits — a mixture whose mass over the selected tokens is Σ_{g selected} P_router(g) ≤ 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F

from coral_bench.core.drafter import DrafterError
from .router import SCORES, Router
from .vocab_grouping import VocabGrouping


@dataclass(frozen=True)
class HeadTop:
    """The top-k draft tokens of each row of one drafter forward."""

    logprobs: torch.Tensor  # [R, k] float32+ draft log-probs (scores of the head's score rule)
    tokens: torch.Tensor  # [R, k] int64 target token ids
    union: int | None = None  # |∪ selected groups| of this forward (routed heads only)


class DraftHead(Protocol):
    """A cheaper replacement for full-vocabulary logits + log-softmax + top-k in a drafter."""

    def top(self, features: torch.Tensor, k: int) -> HeadTop:
        """Top-``k`` tokens per row of ``features`` [R, H]."""

    def min_choices(self) -> int:
        """The fewest tokens any row chooses from (a tree's top_k must not exceed it)."""

    def parameter_count(self) -> int:
        """Trainable parameters beyond the drafter (the router's)."""

    def describe(self) -> dict[str, Any]:
        """Settings and head cost, recorded with the drafter."""


def promote_logits(logits: torch.Tensor) -> torch.Tensor:
    """The default finish for head slices without a target: float32 at least. Drafters pass
    ``Target.finish_logits`` instead, so the model family's scaling / capping is applied too."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


@dataclass(frozen=True)
class HeadLayout:
    """The target's LM head with each group's rows contiguous: views of the head where the grouping is
    the identity (``contiguous``), else one copy in group order."""

    grouping: VocabGrouping
    weight: torch.Tensor = field(repr=False)  # [V, H] rows in g2t order
    bias: torch.Tensor | None = field(repr=False)  # [V] in g2t order, or None
    copied: bool

    @classmethod
    def of(cls, grouping: VocabGrouping, head_weight: torch.Tensor, head_bias: torch.Tensor | None) -> "HeadLayout":
        if head_weight.shape[0] != grouping.vocab_size:
            raise DrafterError(f"the router groups a vocabulary of {grouping.vocab_size} tokens, the target's LM head "
                               f"has {head_weight.shape[0]} rows")
        w, b = head_weight.detach(), None if head_bias is None else head_bias.detach()
        if grouping.is_identity:
            return cls(grouping, w, b, copied=False)
        idx = grouping.g2t.to(w.device)
        return cls(grouping, w.index_select(0, idx), None if b is None else b.index_select(0, idx), copied=True)

    @property
    def copy_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size() if self.copied else 0

    def block(self, first: int, last: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Head rows of groups first…last (a view)."""
        a, b = self.grouping.starts[first], self.grouping.starts[last + 1]
        return self.weight[a:b], None if self.bias is None else self.bias[a:b]


@dataclass(frozen=True)
class RoutedScores:
    """One routed forward, over the columns of the selected groups' union (−inf where a row did not
    select a column's group)."""

    logits: torch.Tensor  # [R, U] float32+ head logits
    tokens: torch.Tensor  # [U] int64 token id of each column
    selected: torch.Tensor  # [R, k] int64 groups chosen by each row
    union: tuple[int, ...]  # the selected groups' union, ascending
    calibrated: torch.Tensor | None = None  # [R, U] calibrated scores (score="calibrated"), else None

    @cached_property
    def logprobs(self) -> torch.Tensor:  # [R, U] the draft log-probs of the head's score rule
        if self.calibrated is not None:
            return self.calibrated
        return self.logits - self.logits.logsumexp(-1, keepdim=True)  # renormalised over the selection

    def dense(self, vocab: int, which: str = "logits") -> torch.Tensor:  # [R, V]
        """Logits or log-probs over the whole vocabulary in token-id order (−inf outside the selection)."""
        src = self.logits if which == "logits" else self.logprobs
        out = torch.full((src.shape[0], vocab), float("-inf"), dtype=src.dtype, device=src.device)
        out[:, self.tokens] = src
        return out


class RoutedHead:
    """CORAL's routed LM head (module doc): router → top-``k`` groups per row → logits per group block."""

    def __init__(self, router: Router, layout: HeadLayout, k: int, score: str = "renorm",
                 finish: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if router.groups != layout.grouping.groups:
            raise DrafterError(f"the router scores {router.groups} groups, the grouping has {layout.grouping.groups}")
        if router.proj.in_features != layout.weight.shape[1]:
            raise DrafterError(f"the router reads features of size {router.proj.in_features}, the target's "
                               f"hidden size is {layout.weight.shape[1]}")
        if not 1 <= k <= router.groups:
            raise DrafterError(f"router_k must be in 1…{router.groups}, not {k}")
        if score not in SCORES:
            raise DrafterError(f"router score must be one of {SCORES}, not {score!r}")
        self.router = router.eval().requires_grad_(False)
        self.layout = layout
        self.k = k
        self.score = score
        self.finish = finish or promote_logits
        self._tokens = layout.grouping.g2t.to(layout.weight.device)

    @property
    def grouping(self) -> VocabGrouping:
        return self.layout.grouping

    def min_choices(self) -> int:
        return sum(sorted(self.grouping.sizes)[: self.k])

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.router.parameters())

    def describe(self) -> dict[str, Any]:
        return {"kind": "routed", "groups": self.grouping.groups, "k": self.k, "score": self.score,
                "partition": self.grouping.rule, "head_copy_bytes": self.layout.copy_bytes,
                "rows_per_group": self.grouping.vocab_size / self.grouping.groups}

    def select(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router log-probs [R, N] (float32+) and each row's top-k groups [R, k]."""
        logits = self.router(features.to(self.router.out.weight.dtype))
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
        return logp, logp.topk(self.k, dim=-1).indices

    def scores(self, features: torch.Tensor) -> RoutedScores:  # features [R, H]
        rows = features.shape[0]
        router_logp, selected = self.select(features)
        chosen = torch.zeros(rows, self.grouping.groups, dtype=torch.bool, device=features.device)
        chosen.scatter_(1, selected, True)  # [R, N]
        union = chosen.any(0).nonzero().flatten().tolist()
        starts = self.grouping.starts
        width = sum(starts[g + 1] - starts[g] for g in union)
        x = features.to(self.layout.weight.dtype)
        calibrated = self.score == "calibrated"
        logits = scores = None
        cols = []
        offset = 0
        for first, last in _runs(union, chosen):  # adjacent groups chosen by the same rows: one matmul
            w, b = self.layout.block(first, last)
            who = chosen[:, first]
            idx = slice(None) if bool(who.all()) else who.nonzero().flatten()
            part = self.finish(F.linear(x[idx], w, b))  # [r, size]: only the rows that chose these groups
            if logits is None:
                logits = torch.full((rows, width), float("-inf"), dtype=part.dtype, device=x.device)
                scores = torch.full_like(logits, float("-inf")) if calibrated else None
            size = part.shape[1]
            logits[idx, offset : offset + size] = part
            if calibrated:  # log P_router(g) + log-softmax within g, group by group
                sizes = [starts[g + 1] - starts[g] for g in range(first, last + 1)]
                pieces = [p - p.logsumexp(-1, keepdim=True) + router_logp[idx, g][:, None]
                          for g, p in zip(range(first, last + 1), part.split(sizes, dim=1))]
                scores[idx, offset : offset + size] = torch.cat(pieces, dim=1)
            cols.append(self._tokens[starts[first] : starts[last + 1]])
            offset += size
        return RoutedScores(logits, torch.cat(cols), selected, tuple(union), scores)

    def top(self, features: torch.Tensor, k: int) -> HeadTop:
        s = self.scores(features)
        if s.calibrated is not None:
            vals, cols = s.calibrated.topk(k, dim=-1)
        else:  # as the full head does: top-k of the logits, then minus the log-sum-exp (−inf columns add nothing)
            vals, cols = s.logits.topk(k, dim=-1)
            vals = vals - s.logits.logsumexp(-1, keepdim=True)
        return HeadTop(vals, s.tokens[cols], len(s.union))


def _runs(union: list[int], chosen: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of consecutive groups of the union that exactly the same rows chose."""
    runs: list[tuple[int, int]] = []
    for g in union:
        if runs and runs[-1][1] == g - 1 and torch.equal(chosen[:, g], chosen[:, runs[-1][0]]):
            runs[-1] = (runs[-1][0], g)
        else:
            runs.append((g, g))
    return runs


class SubsetHead:
    """FR-Spec: logits over a fixed set of ``vocab`` most frequent training tokens (no router)."""

    def __init__(self, tokens: torch.Tensor, head_weight: torch.Tensor, head_bias: torch.Tensor | None,
                 finish: Callable[[torch.Tensor], torch.Tensor] | None = None, source: str = ""):
        idx = tokens.to(head_weight.device)
        self.tokens = idx  # [V_sub] ascending ids
        self.weight = head_weight.detach().index_select(0, idx)  # [V_sub, H] a copy
        self.bias = None if head_bias is None else head_bias.detach().index_select(0, idx)
        self.finish = finish or promote_logits
        self.source = source

    @classmethod
    def most_frequent(cls, counts: torch.Tensor, vocab: int, head_weight: torch.Tensor,
                      head_bias: torch.Tensor | None, finish=None, source: str = "") -> "SubsetHead":
        if not 1 <= vocab <= counts.numel():
            raise DrafterError(f"@vocab must be in 1…{counts.numel()} (the target's vocabulary), not {vocab}")
        if counts.numel() != head_weight.shape[0]:
            raise DrafterError(f"token counts cover {counts.numel()} tokens, the target's vocabulary is "
                               f"{head_weight.shape[0]}")
        top = torch.sort(counts.long(), descending=True, stable=True).indices[:vocab]
        return cls(torch.sort(top).values, head_weight, head_bias, finish, source)

    def min_choices(self) -> int:
        return int(self.tokens.numel())

    def parameter_count(self) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "frequency-subset", "vocab": int(self.tokens.numel()), "counts": self.source,
                "head_copy_bytes": self.weight.numel() * self.weight.element_size()}

    def top(self, features: torch.Tensor, k: int) -> HeadTop:
        logits = self.finish(F.linear(features.to(self.weight.dtype), self.weight, self.bias))  # [R, V_sub]
        vals, cols = logits.topk(k, dim=-1)
        return HeadTop(vals - logits.logsumexp(-1, keepdim=True), self.tokens[cols])
