"""CORAL's LM-head router and FR-Spec's static vocabulary subset: cheaper draft heads (METHODS.md §6).

A *draft head* turns the drafter's output features into the top-k draft tokens and their log-probs,
as the full head (``Target.logits_from_features`` + log-softmax + top-k) does, while computing
logits for fewer rows of the target's frozen LM head:

- :class:`RoutedHead` — the vocabulary is partitioned into N groups (:class:`VocabGrouping`: rule
  ``contiguous``, ``frequency`` or ``cluster``); a small :class:`Router`, Linear(H→h)·SiLU·Linear(h→N),
  reads each row's feature and picks its top ``router_k`` groups. Logits are computed per selected
  group, on that group's contiguous block of rows of the head, for the rows that chose it — never a
  per-row gather of weights — over the **union** of selected groups; tokens outside a row's groups
  get −inf and are never proposed. The cost is |∪ selected groups|·V/N head rows per forward (not
  k·V/N), so every forward reports |∪| (``HeadTop.union`` → ``DraftTree.head_union``).
- :class:`SubsetHead` — FR-Spec: the ``vocab`` most frequent training tokens, no router: V_sub head
  rows per forward, always.

Head layout: each group must be a contiguous block of head rows. ``contiguous`` groups are token-id
ranges, so the blocks are views of the target's own head (no copy). ``frequency`` and ``cluster``
groups are scattered over the ids, so the head is copied once in group order (V·H elements: 57 MB
for SmolLM2 in bf16, 113 MB in fp32; ``HeadLayout.copy_bytes``). The subset head is a copy of V_sub
rows.

Scores (``score``): ``renorm`` (default) is the log-softmax over the tokens a row selected (it
inflates EAGLE-2 scores: the selected mass is renormalised to 1); ``calibrated`` is
log P_router(g) + log-softmax within group g, for a token of group g, with P_router the softmax over
all N router logits — a mixture whose mass over the selected tokens is Σ_{g selected} P_router(g) ≤ 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .base import DrafterError

PARTITIONS = ("contiguous", "frequency", "cluster")
SCORES = ("renorm", "calibrated")
ROUTER_WIDTH = 256  # h, METHODS.md §6 default
ROUTER_FORMAT = 1
PREFIX = "router."  # checkpoint keys of the router module and the grouping
G2T_KEY = "router.g2t"  # [V] int64: token ids in head-layout order, group by group
STARTS_KEY = "router.group_starts"  # [N + 1] int64: group g = g2t[starts[g]:starts[g + 1]]
COUNTS_KEY = "vocab.counts"  # [V] int64: token frequency in the training data (loss tokens)
CLUSTER_ITERATIONS = 10


# ---- vocabulary grouping ---------------------------------------------------------------------
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


# ---- the router ------------------------------------------------------------------------------
class Router(nn.Module):
    """Linear(H → h) · SiLU · Linear(h → N): group logits from a drafter output feature."""

    def __init__(self, hidden: int, groups: int, width: int = ROUTER_WIDTH):
        super().__init__()
        self.proj = nn.Linear(hidden, width)
        self.out = nn.Linear(width, groups)

    @property
    def groups(self) -> int:
        return self.out.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., N]
        return self.out(F.silu(self.proj(x)))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v.detach() for k, v in self.state_dict().items()}


def router_shapes(hidden: int, groups: int, width: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor of a routed drafter beyond the EAGLE keys (key → shape)."""
    return {"router.proj.weight": (width, hidden), "router.proj.bias": (width,),
            "router.out.weight": (groups, width), "router.out.bias": (groups,),
            G2T_KEY: (vocab,), STARTS_KEY: (groups + 1,)}


def router_description(grouping: VocabGrouping, router: Router, k: int, score: str,
                       layout_copy: bool, **more: Any) -> dict[str, Any]:
    """The config's ``coral_bench.router`` section: what the router tensors are and how they are used."""
    return {
        "format": ROUTER_FORMAT,
        "architecture": "Linear(H->h) . SiLU . Linear(h->N)",
        "groups": router.groups, "k": k, "width": router.proj.out_features,
        "hidden_size": router.proj.in_features, "vocab_size": grouping.vocab_size,
        "partition": grouping.describe(),
        "score": score,
        "head_layout": ("views of the target's LM head (contiguous id ranges, no copy)" if not layout_copy else
                        "one copy of the LM head in group order (V x H elements), made when the drafter loads"),
        "tensors": {"router.proj.*, router.out.*": "the router", G2T_KEY: "[V] token ids, group by group",
                    STARTS_KEY: "[N+1] group g = g2t[starts[g]:starts[g+1]]",
                    COUNTS_KEY: "[V] loss-token counts of the training data (frequency ranking, @vocab=V)"},
        **more,
    }


def router_problems(section: Any, tensors: Mapping[str, torch.Tensor], vocab: int, hidden: int) -> list[str]:
    """What is wrong with a checkpoint's router (description + tensors) for a target of this size."""
    if not isinstance(section, dict):
        return ["the coral_bench.router section is not an object"]
    try:
        groups, width = int(section["groups"]), int(section["width"])
        k = int(section["k"])
    except (KeyError, TypeError, ValueError) as err:
        return [f"the coral_bench.router section lacks or garbles {err}"]
    problems = []
    if section.get("format", ROUTER_FORMAT) > ROUTER_FORMAT:
        problems.append(f"router format {section['format']} is newer than this coral-bench ({ROUTER_FORMAT})")
    if section.get("vocab_size", vocab) != vocab:
        problems.append(f"the router was built for a vocabulary of {section['vocab_size']}, the target has {vocab}")
    if section.get("hidden_size", hidden) != hidden:
        problems.append(f"the router reads features of size {section['hidden_size']}, the target's are {hidden}")
    if not 1 <= k <= groups:
        problems.append(f"router k {k} must be in 1…{groups}")
    expected = router_shapes(hidden, groups, width, vocab)
    missing = [key for key in expected if key not in tensors]
    misshaped = [f"{key} {tuple(tensors[key].shape)} (expected {shape})" for key, shape in expected.items()
                 if key in tensors and tuple(tensors[key].shape) != shape]
    unexpected = sorted(key for key in tensors if key.startswith(PREFIX) and key not in expected)
    if missing:
        problems.append(f"missing router keys {missing}")
    if misshaped:
        problems.append(f"mis-shaped router keys {misshaped} (a router for another target's vocabulary or hidden size?)")
    if unexpected:
        problems.append(f"unexpected router keys {unexpected}")
    if not (missing or misshaped):
        try:
            grouping_from(section, tensors)
        except DrafterError as err:
            problems.append(str(err))
    return problems


def grouping_from(section: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> VocabGrouping:
    part = section.get("partition") or {}
    rule = part.get("rule", "contiguous") if isinstance(part, dict) else str(part)
    details = {k: v for k, v in part.items() if k not in ("rule", "groups", "vocab_size", "min_group_size",
                                                         "max_group_size")} if isinstance(part, dict) else {}
    return VocabGrouping(rule, tensors[G2T_KEY].long(), tuple(int(s) for s in tensors[STARTS_KEY].tolist()), details)


def router_from(section: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Router:
    """The router module of a validated checkpoint (CPU, in the dtype it was saved in)."""
    keys = ("router.proj.weight", "router.proj.bias", "router.out.weight", "router.out.bias")
    router = Router(int(section["hidden_size"]), int(section["groups"]), int(section["width"]))
    router = router.to(tensors[keys[0]].dtype)
    router.load_state_dict({k.removeprefix(PREFIX): tensors[k] for k in keys})
    return router


# ---- heads ----------------------------------------------------------------------------------
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
