"""Forward timings of the profile pass (docs/methods.md §7), with the device-aware clock (``clock.Clock``).

- the target: T_V(n, ctx) (``Target.score`` of an n-node tree at the context lengths a run saw), T_pf(P),
  and per-region times of a tree forward of n rows: embedding, each decoder layer, final norm, LM head;
- an EAGLE-style drafter: fc, decoder layer, LM head, log-softmax + top-k of the first forward of a cycle
  over L + 1 slots and of the expansions over the top_k frontier; T_dpf(P).

Regions are timed by forward pre/post hooks that exist only inside a ``RegionTimer`` block of the profile
pass and are removed on exit, so benchmark timings never carry them.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from coral_bench.core.clock import Clock
from coral_bench.drafters.eagle import EagleDrafter
from coral_bench.drafters.eagle import _top_logprobs  # the drafter's own log-softmax + top-k, timed as a region
from coral_bench.drafters.eagle_model import DraftKVCache, EagleModel, KVBlock
from coral_bench.costmodel.speedup import Curve, ForwardCosts, Grid
from coral_bench.core.target import Target
from coral_bench.core.tree import DraftTree, TreeShape

@dataclass(frozen=True)
class ProfileSettings:
    nodes: tuple[int, ...] = tuple(range(1, 65))  # n of T_V(n, ctx)
    contexts: tuple[int, ...] = (128, 512)  # ctx of T_V and of the drafter forwards
    prompts: tuple[int, ...] = (32, 128, 512)  # P of T_pf and T_dpf
    repeats: int = 3  # timed repeats per point (median), after one warm-up
    noop_cycles: int = 300  # cycles of the no-op loop per method
    seed: int = 0

    def to_json(self) -> dict:
        return {"nodes": list(self.nodes), "contexts": list(self.contexts), "prompts": list(self.prompts),
                "repeats": self.repeats, "noop_cycles": self.noop_cycles, "seed": self.seed}


@dataclass(frozen=True)
class RegionProfile:
    """One kind of forward at one size: the median repeat's total and its named regions.

    ``regions`` sum to ``total_s`` exactly: the last one, ``other``, is what no named region covers
    (masks, RoPE tables, dtype casts, Python); taken from the same repeat, not separate medians.
    """

    model: str  # "target" or "drafter"
    kind: str  # "tree" (target forward over n nodes), "first" / "expand" (drafter)
    rows: int  # rows the forward processes
    context: int  # cached positions before it
    total_s: float
    regions: tuple[tuple[str, float], ...]  # [(name, seconds)] in forward order, "other" last

    def region(self, name: str) -> float:
        return dict(self.regions)[name]

    def to_json(self) -> dict:
        return {"model": self.model, "kind": self.kind, "rows": self.rows, "context": self.context,
                "total_s": self.total_s, "regions": dict(self.regions)}


# =============================================================================================
# hooks


class RegionTimer:
    """Adds each named module's forward time to a tally, through forward pre/post hooks.

    Hooks exist only inside ``with RegionTimer(...)`` and are removed on exit (also on an exception).
    A module called several times in one forward adds up; regions must not nest.
    """

    def __init__(self, modules: Mapping[str, nn.Module], clock: Clock):
        self._modules = dict(modules)
        self._clock = clock
        self._handles: list[Any] = []
        self._open: dict[str, float] = {}
        self._tally: dict[str, float] = defaultdict(float)

    def __enter__(self) -> "RegionTimer":
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_pre_hook(partial(self._start, name)))
            self._handles.append(module.register_forward_hook(partial(self._stop, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def take(self) -> dict[str, float]:
        """Seconds per region since the last ``take`` (every named region present, 0 if not called)."""
        out = {name: self._tally.get(name, 0.0) for name in self._modules}
        self._tally.clear()
        return out

    def _start(self, name: str, module: nn.Module, args: Any) -> None:
        self._open[name] = self._clock.now()

    def _stop(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        self._tally[name] += self._clock.now() - self._open.pop(name)


def median_repeat(model: str, kind: str, rows: int, context: int,
                   runs: Sequence[tuple[float, Mapping[str, float]]]) -> RegionProfile:
    """The repeat with the median total, its regions in order and ``other`` = total − Σ named."""
    total, regions = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    named = tuple((k, float(v)) for k, v in regions.items())
    return RegionProfile(model, kind, rows, context, float(total), named + (("other", total - sum(regions.values())),))


def median_time(fn: Callable[[], float], repeats: int) -> float:
    """Median of ``repeats`` calls of ``fn`` (each returns its own measured seconds), after one warm-up."""
    fn()
    return statistics.median(fn() for _ in range(max(1, repeats)))


# =============================================================================================
# target


def profile_tree(n: int) -> DraftTree:
    """An n-node test tree (4-ary, distinct tokens): T_V depends on n, not on the tokens."""
    return DraftTree(tokens=tuple(3 + i for i in range(n)), parents=tuple(-1 if i == 0 else (i - 1) // 4
                                                                          for i in range(n)))


def target_modules(target: Target) -> dict[str, nn.Module]:
    """Named regions of a Llama-style HF target: embedding, each decoder layer, final norm, LM head."""
    base = target.model.base_model
    modules = {"embedding": target.model.get_input_embeddings()}
    modules.update({f"layer.{i}": layer for i, layer in enumerate(base.layers)})
    modules["norm"] = base.norm
    modules["lm_head"] = target.model.get_output_embeddings()
    return modules


def random_ids(n: int, vocab: int, gen: torch.Generator) -> torch.Tensor:  # [n]
    return torch.randint(3, vocab, (n,), generator=gen)


def _time_score(target: Target, tree: DraftTree, clock: Clock) -> float:
    start = clock.now()
    target.score(tree)
    seconds = clock.now() - start
    target.discard()
    return seconds


@torch.inference_mode()
def measure_t_v(target: Target, nodes: Sequence[int], contexts: Sequence[int], clock: Clock, repeats: int,
                gen: torch.Generator) -> Grid:
    """T_V(n, ctx) = ``Target.score`` of an n-node tree after a prefix of ctx tokens (docs/methods.md §7)."""
    points = []
    for ctx in contexts:
        target.prefill(random_ids(ctx, target.vocab_size, gen))
        for n in nodes:
            tree = profile_tree(n)
            points.append((n, ctx, median_time(lambda: _time_score(target, tree, clock), repeats)))
    return Grid.from_points(points)


@torch.inference_mode()
def measure_prefill(target: Target, prompts: Sequence[int], clock: Clock, repeats: int, gen: torch.Generator) -> Curve:
    """T_pf(P): prefill plus the first token, as ``decode.generate`` times ``prefill_s``."""
    def once(ids: torch.Tensor) -> float:
        start = clock.now()
        int(target.prefill(ids).logits[0].argmax())
        return clock.now() - start

    return Curve.from_points((p, median_time(partial(once, random_ids(p, target.vocab_size, gen)), repeats))
                             for p in prompts)


@torch.inference_mode()
def target_regions(target: Target, rows: int, context: int, clock: Clock, repeats: int,
                   gen: torch.Generator) -> RegionProfile:
    """Per-layer and per-region times of one ``Target.score`` over ``rows`` nodes after ``context`` tokens."""
    target.prefill(random_ids(context, target.vocab_size, gen))
    tree = profile_tree(rows)
    runs = []
    with RegionTimer(target_modules(target), clock) as timer:
        for _ in range(max(1, repeats) + 1):
            timer.take()
            seconds = _time_score(target, tree, clock)
            runs.append((seconds, timer.take()))
    return median_repeat("target", "tree", rows, context, runs[1:])


# =============================================================================================
# drafter forwards


@dataclass(frozen=True)
class DraftHarness:
    """The calls of one EAGLE-style drafter forward, exactly as ``EagleDrafter`` makes them."""

    model: EagleModel
    embed: Callable[[torch.Tensor], torch.Tensor]  # [n] -> [n, H]
    head: nn.Module  # the LM-head module: its forward is the matmul region
    logits: Callable[[torch.Tensor], torch.Tensor]  # [R, H] -> [R, V] float32+ (Target.logits_from_features)
    top_k: int

    @classmethod
    def of(cls, drafter: EagleDrafter, target: Target) -> "DraftHarness":
        return cls(drafter.model, target.embed, target.model.get_output_embeddings(), target.logits_from_features,
                   tree_k(drafter.settings.tree, target.vocab_size))


def tree_k(tree: TreeShape, vocab: int) -> int:
    return 1 if tree.kind == "chain" else min(tree.top_k, vocab)


def _widths(tree: TreeShape, vocab: int) -> tuple[int, ...]:
    """Frontier width of each expansion (``EagleDrafter._build_tree``): D − 1 of them."""
    k = tree_k(tree, vocab)
    return (k,) * (tree.depth - 1 if tree.kind == "chain" else tree.depth)


def _filled_cache(model: EagleModel, context: int, gen: torch.Generator) -> DraftKVCache:
    """A drafter cache holding ``context`` random slots (values do not change latency)."""
    c, w = model.config, model.fc.weight
    shape = (1, c.num_key_value_heads, context, c.head_dim)
    cache = DraftKVCache()
    if context:
        keys = torch.randn(shape, generator=gen).to(device=w.device, dtype=w.dtype)
        cache.append(KVBlock(keys, keys.clone()))
    return cache


@torch.inference_mode()
def drafter_regions(h: DraftHarness, kind: str, rows: int, context: int, clock: Clock, repeats: int,
                    gen: torch.Generator) -> RegionProfile:
    """One drafter forward + LM head + log-softmax/top-k. ``kind`` "first": ``rows`` = L + 1 new slots, the
    last one's output only (``last_only``); "expand": a frontier of ``rows`` nodes under a tree mask."""
    w = h.model.fc.weight
    cache = _filled_cache(h.model, context, gen)
    ids = torch.randint(3, h.model.config.vocab_size, (rows,), generator=gen).to(w.device)
    feat = torch.randn(1, rows, h.model.config.hidden_size, generator=gen).to(device=w.device, dtype=w.dtype)
    if kind == "first":
        positions, mask, last_only = torch.arange(context, context + rows, device=w.device)[None], None, True
    else:
        positions, last_only = torch.full((1, rows), context, device=w.device), False
        mask = torch.ones(rows, context + rows, dtype=torch.bool, device=w.device)
        mask[:, context:] = torch.eye(rows, dtype=torch.bool, device=w.device)
        mask = mask[None, None]
    modules = {"fc": h.model.fc, "layer": h.model.layers[0], "lm_head": h.head}
    runs = []
    with RegionTimer(modules, clock) as timer:
        for _ in range(max(1, repeats) + 1):
            timer.take()
            t0 = clock.now()
            out = h.model(h.embed(ids)[None], feat, positions, attn_mask=mask, cache=cache, last_only=last_only)
            t1 = clock.now()
            _top_logprobs(h.logits(out.hidden[0]), h.top_k)
            t2 = clock.now()
            cache.truncate(context)
            r = timer.take()
            runs.append((t2 - t0, {"fc": r["fc"], "layer": r["layer"],
                                   "embedding, RoPE, concat": t1 - t0 - r["fc"] - r["layer"],
                                   "lm_head": r["lm_head"], "softmax_topk": t2 - t1 - r["lm_head"]}))
    return median_repeat("drafter", kind, rows, context, runs[1:])


@torch.inference_mode()
def drafter_prefill(h: DraftHarness, prompts: Sequence[int], clock: Clock, repeats: int,
                    gen: torch.Generator) -> Curve:
    """T_dpf(P): the drafter's slots over a P-token prompt (``EagleDrafter.begin``)."""
    w = h.model.fc.weight

    def once(p: int) -> float:
        ids = torch.randint(3, h.model.config.vocab_size, (p,), generator=gen).to(w.device)
        feat = torch.randn(1, p, h.model.config.hidden_size, generator=gen).to(device=w.device, dtype=w.dtype)
        positions = torch.arange(p, device=w.device)[None]
        start = clock.now()
        h.model(h.embed(ids)[None], feat, positions, cache=DraftKVCache(), last_only=True)
        return clock.now() - start

    return Curve.from_points((p, median_time(partial(once, p), repeats)) for p in prompts)


def _body(p: RegionProfile) -> float:
    return p.region("fc") + p.region("layer") + p.region("embedding, RoPE, concat")


def forward_costs(h: DraftHarness, tree: TreeShape, settings: ProfileSettings, clock: Clock, gen: torch.Generator,
                  first_rows: Sequence[int] | None = None) -> tuple[ForwardCosts, tuple[RegionProfile, ...]]:
    """The forward terms of docs/methods.md §7 for one tree: first forwards over ``first_rows`` slots (default
    1 … levels + 1, every L + 1 that occurs), expansions over the frontier, at every profiled context; head
    and softmax/top-k by rows (mean over contexts)."""
    vocab = h.model.config.vocab_size
    widths = _widths(tree, vocab)
    run = partial(drafter_regions, h, clock=clock, repeats=settings.repeats, gen=gen)
    rows = first_rows or range(1, tree.levels + 2)
    first = [run("first", r, c) for c in settings.contexts for r in rows]
    expand = [run("expand", widths[0], c) for c in settings.contexts] if widths else []
    first_body = Grid.from_points((p.rows, p.context, _body(p)) for p in first)
    expand_body = Grid.from_points((p.rows, p.context, _body(p)) for p in expand) if expand else first_body
    by_rows: dict[int, list[RegionProfile]] = defaultdict(list)
    for p in [q for q in first if q.rows == 1] + expand:  # LM head rows: 1 for a first forward, w for expansions
        by_rows[1 if p.kind == "first" else p.rows].append(p)
    head = Curve.from_points((r, statistics.mean(p.region("lm_head") for p in ps)) for r, ps in by_rows.items())
    sm = Curve.from_points((r, statistics.mean(p.region("softmax_topk") for p in ps)) for r, ps in by_rows.items())
    prefill = drafter_prefill(h, settings.prompts, clock, settings.repeats, gen)
    return ForwardCosts(first_body, expand_body, head, sm, prefill, widths), tuple(first + expand)
