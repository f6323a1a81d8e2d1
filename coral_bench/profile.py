"""The profile pass: the latency terms of the speedup model (METHODS.md §7), measured apart from the run.

What it measures, each with the device-aware clock (``clock.Clock``):

- per named region and per decoder layer, for the forwards that occur: target embedding, each
  layer, final norm, LM head (tree forwards of n rows); drafter fc, decoder layer, LM head,
  log-softmax + top-k (the first forward of a cycle over L + 1 slots, expansions over the top_k
  frontier). Regions are timed by forward pre/post hooks that exist only inside a ``RegionTimer``
  block of this pass and are removed on exit, so benchmark timings never carry them;
- T_V(n, ctx): ``Target.score`` of an n-node tree at the context lengths a run saw; T_pf(P), T_dpf(P);
- the per-cycle costs outside model forwards (tree building and rerank, prompt-lookup matching,
  verification, commit, the loop itself) from a **no-op decode loop**: the real ``decode.generate``,
  ``Target`` (mask, commit over a cache of the real shape) and drafter code, with the networks
  replaced by stand-ins that return precomputed outputs. Never a residual of the run.

Timings on a shared CPU are approximate: the load average is recorded beside them.
"""

from __future__ import annotations

import copy
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from . import results as rd
from .clock import Clock, is_busy, load_average
from .decode import generate
from .drafters.base import Drafter, DrafterSettings, generator_for
from .drafters.eagle import EagleDrafter, EagleInfo, build_eagle, build_routed
from .drafters.early_exit import EarlyExitDrafter, parse_layers
from .drafters.eagle import _top_logprobs  # the drafter's own log-softmax + top-k, timed as a region
from .drafters.eagle_model import DraftKVCache, EagleModel, EagleOutput, KVBlock
from .drafters.registry import DRAFTERS, build_drafter
from .records import SampleRecord
from .sampling import SamplingConfig
from .speedup import Curve, DrafterCosts, ForwardCosts, Grid, LoopCosts, TargetCosts, lm_head_shares
from .target import Target
from .tree import DraftTree, TreeShape

PROFILE = "profile.json"
SCHEMA = 1
NOOP_DRAFTERS = ("vanilla", "prompt-lookup")  # model-free drafters the no-op loop runs as they are
ORACLES = ("oracle", "noisy-oracle")  # no forwards: drafting is a lookup, all of it in the no-op loop
EARLY_EXIT = "early-exit"


def is_eagle(name: str) -> bool:
    """EAGLE-style drafters (eagle, eagle2, hass, coral, coral-router): fc / layer / LM-head forwards."""
    return name in DRAFTERS and DRAFTERS[name].factory in (build_eagle, build_routed)


def is_modelled(name: str) -> bool:
    """Drafters the profile pass and the cost model cover."""
    return is_eagle(name) or name in NOOP_DRAFTERS or name in ORACLES or name == EARLY_EXIT


# =============================================================================================
# values


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


@dataclass(frozen=True)
class NoopPlan:
    """One sample for the no-op loop: its prompt length, new tokens and accepted count per cycle."""

    prompt_tokens: int
    new_tokens: int
    accepted: tuple[int, ...]  # [cycles] L_c to reproduce (cycled; 0 once exhausted)


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
class MethodProfile:
    """One drafter (or vanilla) with its tree: the cost-model terms and the region tables behind them."""

    label: str
    name: str
    tree: TreeShape | None
    costs: DrafterCosts | None  # None: this drafter cannot be profiled (reason says why)
    regions: tuple[RegionProfile, ...] = ()
    parameters: int = 0  # fc + layer
    lm_head_parameters: int = 0
    first_rows: float = 1.0  # mean L + 1 of the first forward used for the shares
    reason: str | None = None

    def shares(self) -> tuple[float, float] | None:
        """(lm_head_share, lm_head_total_share) per cycle (METHODS.md §1), at the median context."""
        if self.costs is None or self.costs.forward is None:
            return None
        f = self.costs.forward
        context = f.first_body.contexts[len(f.first_body.contexts) // 2]
        return lm_head_shares(f, self.costs.loop.tree_s, self.first_rows, context, self.costs.head_rows)

    def to_json(self) -> dict:
        shares = self.shares()
        out: dict[str, Any] = {"name": self.name, "tree": self.tree.describe() if self.tree else None,
                               "parameters": self.parameters, "lm_head_parameters": self.lm_head_parameters}
        if self.costs is None:
            return out | {"supported": False, "reason": self.reason}
        f, ee, hr = self.costs.forward, self.costs.early_exit, self.costs.head_rows
        return out | {"supported": True, "forward": f.to_json() if f else None, "loop": self.costs.loop.to_json(),
                      "early_exit": ee.to_json() if ee else None, "head_rows": hr.to_json() if hr else None,
                      "first_rows": self.first_rows, "lm_head_share": shares[0] if shares else None,
                      "lm_head_total_share": shares[1] if shares else None,
                      "regions": [r.to_json() for r in self.regions]}


@dataclass(frozen=True)
class ProfileReport:
    """Everything a profile pass measured; ``to_json`` is ``profile.json``."""

    target: str
    target_costs: TargetCosts | None  # None: drafter-only (real shapes on a CPU)
    target_regions: tuple[RegionProfile, ...]
    methods: tuple[MethodProfile, ...]  # vanilla first
    settings: ProfileSettings
    environment: Mapping[str, Any] = field(default_factory=dict)  # device, dtype, threads, load, clock

    def to_json(self) -> dict:
        costs = self.target_costs.to_json() if self.target_costs else {"t_v": [], "t_pf": []}
        return {"schema": SCHEMA, "target": self.target, **dict(self.environment), "settings": self.settings.to_json(),
                **costs, "target_regions": [r.to_json() for r in self.target_regions],
                "methods": {m.label: m.to_json() for m in self.methods}}


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


def _median_repeat(model: str, kind: str, rows: int, context: int,
                   runs: Sequence[tuple[float, Mapping[str, float]]]) -> RegionProfile:
    """The repeat with the median total, its regions in order and ``other`` = total − Σ named."""
    total, regions = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    named = tuple((k, float(v)) for k, v in regions.items())
    return RegionProfile(model, kind, rows, context, float(total), named + (("other", total - sum(regions.values())),))


def _median_time(fn: Callable[[], float], repeats: int) -> float:
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


def _random_ids(n: int, vocab: int, gen: torch.Generator) -> torch.Tensor:  # [n]
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
    """T_V(n, ctx) = ``Target.score`` of an n-node tree after a prefix of ctx tokens (METHODS.md §7)."""
    points = []
    for ctx in contexts:
        target.prefill(_random_ids(ctx, target.vocab_size, gen))
        for n in nodes:
            tree = profile_tree(n)
            points.append((n, ctx, _median_time(lambda: _time_score(target, tree, clock), repeats)))
    return Grid.from_points(points)


@torch.inference_mode()
def measure_prefill(target: Target, prompts: Sequence[int], clock: Clock, repeats: int, gen: torch.Generator) -> Curve:
    """T_pf(P): prefill plus the first token, as ``decode.generate`` times ``prefill_s``."""
    def once(ids: torch.Tensor) -> float:
        start = clock.now()
        int(target.prefill(ids).logits[0].argmax())
        return clock.now() - start

    return Curve.from_points((p, _median_time(partial(once, _random_ids(p, target.vocab_size, gen)), repeats))
                             for p in prompts)


@torch.inference_mode()
def target_regions(target: Target, rows: int, context: int, clock: Clock, repeats: int,
                   gen: torch.Generator) -> RegionProfile:
    """Per-layer and per-region times of one ``Target.score`` over ``rows`` nodes after ``context`` tokens."""
    target.prefill(_random_ids(context, target.vocab_size, gen))
    tree = profile_tree(rows)
    runs = []
    with RegionTimer(target_modules(target), clock) as timer:
        for _ in range(max(1, repeats) + 1):
            timer.take()
            seconds = _time_score(target, tree, clock)
            runs.append((seconds, timer.take()))
    return _median_repeat("target", "tree", rows, context, runs[1:])


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
                   _tree_k(drafter.settings.tree, target.vocab_size))


def _tree_k(tree: TreeShape, vocab: int) -> int:
    return 1 if tree.kind == "chain" else min(tree.top_k, vocab)


def _widths(tree: TreeShape, vocab: int) -> tuple[int, ...]:
    """Frontier width of each expansion (``EagleDrafter._build_tree``): D − 1 of them."""
    k = _tree_k(tree, vocab)
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
    return _median_repeat("drafter", kind, rows, context, runs[1:])


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

    return Curve.from_points((p, _median_time(partial(once, p), repeats)) for p in prompts)


def _body(p: RegionProfile) -> float:
    return p.region("fc") + p.region("layer") + p.region("embedding, RoPE, concat")


def forward_costs(h: DraftHarness, tree: TreeShape, settings: ProfileSettings, clock: Clock, gen: torch.Generator,
                  first_rows: Sequence[int] | None = None) -> tuple[ForwardCosts, tuple[RegionProfile, ...]]:
    """The forward terms of METHODS.md §7 for one tree: first forwards over ``first_rows`` slots (default
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


# =============================================================================================
# the no-op decode loop (per-cycle costs outside model forwards)


class _Script:
    """Decides which token each scored row predicts, so that each cycle accepts the planned L_c along the
    tree's deepest branch (best-ranked among equals), and the bonus is never a child or an EOS."""

    def __init__(self, eos: Sequence[int], avoid_below: int):
        self._eos = set(eos)
        self._low = avoid_below  # drafted ids of the no-op EAGLE view lie below this
        self._plan: list[int] = []

    def start(self, accepted: Sequence[int]) -> None:
        self._plan = list(reversed(accepted))

    def filler(self, taken: set[int]) -> int:
        token = self._low
        while token in taken or token in self._eos:
            token += 1
        return token

    def wanted(self, ids: torch.Tensor, mask: torch.Tensor | None, prefill: bool) -> list[int]:  # ids [n]
        n = ids.shape[0]
        if prefill or n == 1:
            if not prefill and self._plan:
                self._plan.pop()
            return [self.filler(set())] * n
        children = _children_from_mask(mask, n)
        tokens = ids.tolist()
        want = [self.filler(set())] * n
        height = _heights(children)
        node, left = 0, self._plan.pop() if self._plan else 0
        while left > 0 and children[node]:
            child = max(children[node], key=lambda c: (height[c], -c))  # the deepest branch, then the best-ranked
            want[node], node, left = tokens[child], child, left - 1
        want[node] = self.filler({tokens[c] for c in children[node]})
        return want


def _children_from_mask(mask: torch.Tensor | None, n: int) -> list[list[int]]:
    """Children lists of a tree from ``Target``'s additive mask [1, 1, n, P + n] (parent = deepest
    ancestor); no mask: ``Target`` scores chains through the plain causal path."""
    if mask is None:
        return [[i + 1] for i in range(n - 1)] + [[]]
    allowed = (mask[0, 0, :, -n:] == 0).cpu()
    idx = torch.arange(n)
    parents = torch.where(allowed & (idx[None, :] < idx[:, None]), idx[None, :], -1).max(dim=1).values.tolist()
    children: list[list[int]] = [[] for _ in range(n)]
    for i, p in enumerate(parents[1:], start=1):
        children[p].append(i)
    return children


def _heights(children: list[list[int]]) -> list[int]:
    """Levels below each node (children follow their parents, so one reverse pass suffices)."""
    height = [0] * len(children)
    for node in range(len(children) - 1, -1, -1):
        height[node] = 1 + max((height[c] for c in children[node]), default=-1)
    return height


@dataclass(frozen=True)
class _NoopOutput:
    last_hidden_state: torch.Tensor  # [1, n, 1] float32: the token each row must predict


class _NoopBackbone(nn.Module):
    """Stands in for the HF decoder: appends zero keys/values of the real shapes to the cache (so commits
    move real bytes; the one use of the cache API outside target.py, as the HF layers make it) and returns,
    as its "features", the token each row must predict."""

    def __init__(self, config: Any, dtype: torch.dtype, device: torch.device, script: _Script):
        super().__init__()
        self._layers = int(config.num_hidden_layers)
        heads = int(config.num_attention_heads)
        self._kv = (int(getattr(config, "num_key_value_heads", None) or heads),
                    int(getattr(config, "head_dim", None) or config.hidden_size // heads))
        self._dtype, self._device, self._script = dtype, device, script

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, **_):
        n = input_ids.shape[1]
        prefill = cache.get_seq_length() == 0
        zeros = torch.zeros(1, self._kv[0], n, self._kv[1], dtype=self._dtype, device=self._device)
        for layer in range(self._layers):
            cache.update(zeros, zeros, layer)
        want = self._script.wanted(input_ids[0], attention_mask, prefill)
        return _NoopOutput(torch.tensor(want, dtype=torch.float32, device=self._device).view(1, n, 1))


class _NoopHead(nn.Module):
    """Precomputed logits [rows, V] (float32, like a real head's after the cast) with each row's wanted token on top."""

    def __init__(self, vocab: int, rows: int, device: torch.device, gen: torch.Generator):
        super().__init__()
        self.weight = torch.empty(vocab, 1, device="meta")  # Target.vocab_size reads its shape
        self._base = torch.rand(rows, vocab, generator=gen).to(device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # [..., R, 1] -> [..., R, V]
        rows = features.shape[-2]
        base = self._base[:rows] if rows <= self._base.shape[0] else self._base[:1].expand(rows, -1)
        return base.clone().scatter_(-1, features.long(), 2.0)


class _NoopLM(nn.Module):
    """An HF-causal-LM look-alike for ``Target``: real config, cache and masks; no network."""

    def __init__(self, config: Any, dtype: torch.dtype, device: torch.device, script: _Script, rows: int,
                 gen: torch.Generator):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.config._attn_implementation = "sdpa"
        self.model = _NoopBackbone(self.config, dtype, device, script)
        self.lm_head = _NoopHead(int(config.vocab_size), rows, device, gen)
        self._dtype, self._device = dtype, device

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


class _NoopEagleModel(nn.Module):
    """Stands in for ``EagleModel``: appends one-number slots to the drafter cache, returns zero features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)  # EagleDrafter reads fc.weight.dtype

    def forward(self, emb, feat, positions, past=None, attn_mask=None, cache=None, last_only=False) -> EagleOutput:
        s = emb.shape[1]
        block = KVBlock(emb.new_zeros(1, 1, s, 1), emb.new_zeros(1, 1, s, 1))
        if cache is not None:
            cache.append(block)
        return EagleOutput(hidden=emb.new_zeros(1, 1 if last_only else s, 1), kv=block)


class _DrafterView:
    """What ``EagleDrafter`` asks of its target, answered from a precomputed table over a small vocabulary
    (so log-softmax + top-k, timed in the profile as T_sm, cost nearly nothing here and are not counted twice)."""

    def __init__(self, vocab: int, rows: int, eos: Sequence[int], device: torch.device, gen: torch.Generator):
        # Peaked like a trained drafter's (each rank 2 nats below the last), so the tree reaches full depth.
        ranks = torch.stack([torch.randperm(vocab, generator=gen) for _ in range(rows)]).float()
        table = -2.0 * ranks + 0.1 * torch.rand(rows, vocab, generator=gen)
        table[:, [e for e in eos if e < vocab]] = float("-inf")  # never draft an EOS: the loop must run on
        self._table = table.to(device)
        self.vocab_size, self.device, self.dtype = vocab, device, torch.float32

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, 1, device=self.device)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:  # [R, 1] -> [R, V]
        return self._table[: features.shape[0]]


def _noop_drafter(name: str, settings: DrafterSettings, eos: Sequence[int], device: torch.device,
                  gen: torch.Generator, info: EagleInfo | None, target: Target | None = None) -> Drafter:
    from .profile_terms import EarlyExitView

    if is_eagle(name):
        k = _tree_k(settings.tree, 10**9)
        view = _DrafterView(max(64, 4 * k + len(eos)), max(k, 1), eos, device, gen)
        return EagleDrafter(view, _NoopEagleModel(), settings, info)  # type: ignore[arg-type]
    if name in ORACLES:  # the real oracle code over the no-op target (its vocabulary and EOS)
        return build_drafter(target, settings)  # type: ignore[arg-type]
    if name == EARLY_EXIT:  # the real drafter (tree building, rerank) around precomputed drafts
        config = target.model.config  # type: ignore[union-attr]
        layers = parse_layers(settings.checkpoint, int(config.num_hidden_layers))
        view = EarlyExitView(int(config.vocab_size), settings.tree.levels, eos, device, gen)
        return EarlyExitDrafter(view, settings, layers)  # type: ignore[arg-type]
    return build_drafter(None, settings)  # type: ignore[arg-type]  # vanilla, prompt-lookup: no target needed


def noop_loop(config: Any, dtype: torch.dtype, device: torch.device, name: str, tree: TreeShape,
              plans: Sequence[NoopPlan], clock: Clock, max_cycles: int, seed: int = 0,
              info: EagleInfo | None = None, checkpoint: str | None = None) -> LoopCosts:
    """Per-cycle costs outside model forwards: the real decode loop, ``Target`` and drafter code around
    stand-in networks that return precomputed outputs (METHODS.md §7), replaying ``plans``. Oracles read a
    constant greedy line (untimed, as in a run); ``checkpoint`` carries early-exit's layer count."""
    from .profile_terms import constant_reference

    gen = torch.Generator().manual_seed(seed)
    eos = _eos_ids(config)
    low = max(64, 4 * tree.top_k + len(eos))
    script = _Script(eos, low)
    target = Target(_NoopLM(config, dtype, device, script, tree.max_nodes + 1, gen), eos, name="no-op")
    settings = DrafterSettings(name=name, tree=tree, checkpoint=checkpoint if name == EARLY_EXIT else None)
    drafter = _noop_drafter(name, settings, eos, device, gen, info, target)
    reference = constant_reference(script.filler(set())) if name in ORACLES else None
    vocab = int(config.vocab_size)
    sums, cycles, decode = defaultdict(float), 0, 0.0
    for i, plan in enumerate([plans[0], *plans]):  # the first is a warm-up
        prompt = torch.randint(low, vocab, (plan.prompt_tokens,), generator=gen)
        prompt = [t for t in prompt.tolist() if t not in eos] or [low]
        script.start(plan.accepted)
        out = generate(target, drafter, prompt, plan.new_tokens, SamplingConfig(), generator_for(seed), clock,
                       reserve=tree.max_nodes, reference=reference)
        if i == 0:
            continue
        for c in out.cycles:
            for k in ("draft_s", "score_s", "verify_s", "commit_s"):
                sums[k] += getattr(c, k)
        cycles += len(out.cycles)
        decode += out.wall_s - out.prefill_s
        if cycles >= max_cycles:
            break
    n = max(cycles, 1)
    stages = sums["draft_s"] + sums["score_s"] + sums["verify_s"] + sums["commit_s"]
    return LoopCosts(sums["draft_s"] / n, sums["verify_s"] / n, sums["commit_s"] / n, (decode - stages) / n,
                     sums["score_s"] / n, cycles)


def _eos_ids(config: Any) -> tuple[int, ...]:
    eos = getattr(config, "eos_token_id", None)
    eos = eos if isinstance(eos, (list, tuple)) else (eos,)
    return tuple(int(e) for e in eos if e is not None) or (2,)


def synthetic_plans(tree: TreeShape, prompt_tokens: int, new_tokens: int, samples: int = 8) -> list[NoopPlan]:
    """Plans without a run: L_c = c mod (levels + 1), so every accepted length occurs."""
    cycles = max(1, new_tokens)
    accepted = tuple(c % (tree.levels + 1) for c in range(cycles))
    return [NoopPlan(prompt_tokens, new_tokens, accepted)] * samples


def plans_from_samples(samples: Sequence[SampleRecord]) -> list[NoopPlan]:
    return [NoopPlan(s.prompt_tokens, s.new_tokens, tuple(s.accepted)) for s in samples if s.cycles]


# =============================================================================================
# the pass


def _environment(device: torch.device, dtype: torch.dtype, load_before: float) -> dict:
    threads = torch.get_num_threads()
    load_after = load_average()
    return {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "threads": threads,
            "clock": "perf_counter" if device.type == "cpu" else f"perf_counter after {device.type} synchronize",
            "load_average_before": round(load_before, 2), "load_average_after": round(load_after, 2),
            "busy_machine": is_busy(max(load_before, load_after))}


@dataclass(frozen=True)
class MethodSpec:
    """A method to profile: result label, registry name, checkpoint, tree; plans for its no-op loop."""

    label: str
    name: str
    checkpoint: str | None
    tree: TreeShape
    plans: tuple[NoopPlan, ...]
    seed: int = 0

    @property
    def nodes(self) -> int:
        """Tree nodes a cycle verifies (1 for vanilla)."""
        return 1 if self.name == "vanilla" else self.tree.max_nodes

    @property
    def first_rows(self) -> float:
        """Mean L_{c−1} + 1 over cycles that have a predecessor (1 where the plans have none)."""
        rows = [a + 1 for p in self.plans for a in p.accepted[:-1]]
        return statistics.mean(rows) if rows else 1.0


def profile_method(spec: MethodSpec, target: Target, settings: ProfileSettings, clock: Clock) -> MethodProfile:
    """Forward terms (EAGLE-style drafters, with a routed / subset head's rows; early exit's layers) and
    no-op loop costs of one method on ``target``. Oracles and model-free drafters: the no-op loop only."""
    from .profile_terms import early_exit_costs, head_row_costs

    gen = torch.Generator().manual_seed(settings.seed)
    if not is_modelled(spec.name):
        return MethodProfile(spec.label, spec.name, spec.tree, None,
                             reason=f"{spec.name}: the profile pass does not model this drafter")
    forward, early, rows, regions, params, info = None, None, None, (), 0, None
    if is_eagle(spec.name):
        drafter = build_drafter(target, DrafterSettings(spec.name, spec.tree, spec.checkpoint, spec.seed))
        h = DraftHarness.of(drafter, target)
        forward, regions = forward_costs(h, spec.tree, settings, clock, gen)
        params, info = drafter.parameter_count(), drafter.info
        if drafter.head is not None:
            rows = head_row_costs(drafter.head, (1, *forward.widths), h.top_k, clock, settings.repeats, gen)
    elif spec.name == EARLY_EXIT:
        layers = parse_layers(spec.checkpoint, target.num_layers)
        early, regions = early_exit_costs(target, layers, spec.tree.levels, settings.contexts, clock,
                                          settings.repeats, gen)
    loop = noop_loop(target.model.config, target.dtype, target.device, spec.name, spec.tree, spec.plans, clock,
                     settings.noop_cycles, settings.seed, info, spec.checkpoint)
    head = target.vocab_size * target.hidden_size if forward else 0
    return MethodProfile(spec.label, spec.name, spec.tree, DrafterCosts(forward, loop, early, rows), regions, params,
                         head, spec.first_rows if forward else 1.0)


def profile_target(target: Target, settings: ProfileSettings, clock: Clock,
                   region_rows: Sequence[int]) -> tuple[TargetCosts, tuple[RegionProfile, ...]]:
    """T_V(n, ctx), T_pf(P) and per-layer regions of tree forwards at ``region_rows`` (median context)."""
    gen = torch.Generator().manual_seed(settings.seed)
    limit = target.max_context - max(settings.nodes)
    contexts = tuple(sorted({min(c, limit) for c in settings.contexts}))
    t_v = measure_t_v(target, settings.nodes, contexts, clock, settings.repeats, gen)
    prefill = measure_prefill(target, settings.prompts, clock, settings.repeats, gen)
    middle = contexts[len(contexts) // 2]
    regions = tuple(target_regions(target, r, middle, clock, settings.repeats, gen) for r in sorted(set(region_rows)))
    return TargetCosts(t_v, prefill), regions


def profile_pass(target: Target, target_name: str, methods: Sequence[MethodSpec], settings: ProfileSettings,
                 clock: Clock) -> ProfileReport:
    """The whole pass on a loaded target: target terms, then vanilla and each method."""
    load_before = load_average()
    rows = {1} | {min(m.nodes, max(settings.nodes)) for m in methods}
    costs, regions = profile_target(target, settings, clock, sorted(rows))
    profiles = tuple(profile_method(m, target, settings, clock) for m in methods)
    return ProfileReport(target_name, costs, regions, profiles, settings,
                         _environment(target.device, target.dtype, load_before))


# =============================================================================================
# run directories


def run_contexts(samples: Sequence[SampleRecord]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(contexts, prompts) a run saw: ctx = {min P, median P + N, max P + N}; P = {min, median, max}."""
    prompts = sorted(s.prompt_tokens for s in samples)
    totals = sorted(s.prompt_tokens + s.new_tokens for s in samples)
    contexts = {prompts[0], totals[len(totals) // 2], totals[-1]}
    return tuple(sorted(contexts)), tuple(sorted({prompts[0], prompts[len(prompts) // 2], prompts[-1]}))


def run_methods(run_dir: Path, extra: Sequence[Any] = ()) -> list[MethodSpec]:
    """vanilla and the run's drafters (``config.json``), plus ``extra`` DrafterSpecs, with their plans."""
    from .methods import DrafterSpec

    config = json.loads((run_dir / rd.CONFIG).read_text())
    samples = rd.read_samples(run_dir)
    seed = int(config.get("sampling", {}).get("seed", 0))
    resolved = {label: m.get("tree") for label, m in config.get("methods", {}).items()}
    specs = [DrafterSpec("vanilla", "vanilla", None, TreeShape("chain", 1))]
    specs += [DrafterSpec(d["label"], d["name"], d.get("checkpoint"), _tree_or_none(resolved.get(d["label"])))
              for d in config.get("drafters", [])]
    specs += [s for s in extra if s.label not in {x.label for x in specs}]
    out = []
    for s in specs:
        default = DRAFTERS[s.name].default_tree if s.name in DRAFTERS else TreeShape("chain", 1)
        tree = s.tree or default
        own = [r for r in samples if r.method == s.label]
        plans = plans_from_samples(own) or synthetic_plans(tree, 128, 64)
        out.append(MethodSpec(s.label, s.name, s.checkpoint, tree, tuple(plans), seed))
    return out


def _tree_or_none(text: str | None) -> TreeShape | None:
    return TreeShape.parse(text) if text else None


def write_profile(run_dir: Path, report: ProfileReport) -> dict:
    """``profile.json``, and results.json's ``profile`` section and per-drafter LM-head shares."""
    body = report.to_json()
    rd.write_json(run_dir / PROFILE, body)
    results_path = run_dir / rd.RESULTS
    if results_path.exists():
        results = json.loads(results_path.read_text())
        results["profile"] = body
        for m in report.methods:
            shares = m.shares()
            if m.label in results.get("drafters", {}) and shares is not None:
                results["drafters"][m.label]["lm_head_share"] = shares[0]
                results["drafters"][m.label]["lm_head_total_share"] = shares[1]
        rd.write_json(results_path, results)
    return body


def read_profile(run_dir: Path) -> dict | None:
    path = run_dir / PROFILE
    return json.loads(path.read_text()) if path.exists() else None


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def profile_run(run_dir: Path, settings: ProfileSettings | None = None, extra: Sequence[Any] = (),
                loaded: Any = None, own_lengths: bool = True) -> ProfileReport:
    """The profile pass for a run directory: its target, dtype, device and threads, vanilla and its drafters
    (+ ``extra`` DrafterSpecs); contexts and prompt lengths from its samples unless ``own_lengths`` is False
    (then ``settings``'). Written into the run (profile.json, results.json)."""
    from .loading import load_target

    config = json.loads((run_dir / rd.CONFIG).read_text())
    samples = rd.read_samples(run_dir)
    if not samples:
        raise ValueError(f"{run_dir} holds no samples to profile against")
    _set_threads(config.get("threads"))
    settings = settings or ProfileSettings()
    if own_lengths:
        contexts, prompts = run_contexts(samples)
        settings = ProfileSettings(settings.nodes, contexts, prompts, settings.repeats, settings.noop_cycles,
                                   settings.seed)
    loaded = loaded or load_target(config["target"], config["dtype"], config["device"])
    clock = Clock(loaded.target.device)
    report = profile_pass(loaded.target, loaded.name, run_methods(run_dir, extra), settings, clock)
    write_profile(run_dir, report)
    return report


def ensure_profile(run_dir: Path, settings: ProfileSettings | None = None, loaded: Any = None) -> dict:
    """``profile.json`` of the run, running the profile pass first when there is none."""
    return read_profile(run_dir) or profile_run(run_dir, settings, loaded=loaded).to_json()


def profile_standalone(target_name: str, dtype: str | None, device: str | None, threads: int | None,
                       drafters: Sequence[Any], tree: TreeShape | None, settings: ProfileSettings) -> ProfileReport:
    """The profile pass without a run: synthetic acceptance plans, the given lengths."""
    from .loading import load_target

    _set_threads(threads)
    loaded = load_target(target_name, dtype, device)
    methods = standalone_methods(drafters, tree, settings)
    return profile_pass(loaded.target, loaded.name, methods, settings, Clock(loaded.target.device))


def standalone_methods(drafters: Sequence[Any], tree: TreeShape | None, settings: ProfileSettings,
                       new_tokens: int = 64) -> list[MethodSpec]:
    """vanilla + ``drafters`` (DrafterSpecs; default: a random-weight ``eagle``) with synthetic plans."""
    from .methods import DrafterSpec

    prompt = settings.prompts[len(settings.prompts) // 2]
    specs = [DrafterSpec("vanilla", "vanilla", None, TreeShape("chain", 1))]
    specs += list(drafters) or [DrafterSpec("eagle", "eagle", None, None)]
    out = []
    for s in specs:
        if s.name not in DRAFTERS:
            raise ValueError(f"unknown drafter {s.name!r}: choose from {', '.join(DRAFTERS)}")
        shape = s.tree or tree or DRAFTERS[s.name].default_tree
        out.append(MethodSpec(s.label, s.name, s.checkpoint, shape,
                              tuple(synthetic_plans(shape, prompt, new_tokens)), settings.seed))
    return out
