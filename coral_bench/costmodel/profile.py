"""The profile pass: the latency terms of the speedup model (docs/methods.md §7), measured apart from the run.

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

The forward timings live in ``forwards``, the no-op loop in ``noop``, the early-exit,
head-row and oracle terms in ``terms``; this module runs the pass (on a run directory or
standalone) and writes ``profile.json``.

Timings on a shared CPU are approximate: the load average is recorded beside them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from coral_bench.rundir import layout as rd
from coral_bench.rundir.layout import VANILLA
from coral_bench.rundir.recorded import read_config
from coral_bench.core.clock import Clock, is_busy, load_average
from coral_bench.core.event_clock import clock_description, clock_for
from coral_bench.core.drafter import DrafterSettings
from coral_bench.drafters.early_exit import parse_layers
from coral_bench.drafters.registry import DRAFTERS, BASELINE, EAGLE, EAGLE3, EARLY_EXIT, build_drafter, tree_for
from coral_bench.costmodel.forwards import ProfileSettings, DraftHarness, RegionProfile, forward_costs, measure_prefill, measure_t_v, target_regions
from coral_bench.costmodel.noop import NoopPlan, noop_loop, plans_from_samples, synthetic_plans
from coral_bench.costmodel.terms import early_exit_costs, head_row_costs
from coral_bench.core.records import SampleRecord
from coral_bench.costmodel.speedup import DrafterCosts, TargetCosts, lm_head_shares
from coral_bench.core.target import Target
from coral_bench.core.tree import TreeShape

PROFILE = "profile.json"
SCHEMA = 1
def is_eagle(name: str) -> bool:
    """EAGLE-style drafters (eagle, eagle2, hass, coral, coral-router): fc / layer / LM-head forwards."""
    return name in DRAFTERS and DRAFTERS[name].kind == EAGLE


def is_modelled(name: str) -> bool:
    """Drafters the profile pass and the cost model cover: every registered kind has its model (baseline and
    model-free drafters: the no-op loop as they are; oracles: a lookup, all of it in the no-op loop; early
    exit: its layers; EAGLE-style: fc / layer / LM-head forwards) except EAGLE-3, whose three-layer
    features and own head the cost model does not describe yet."""
    return name in DRAFTERS and DRAFTERS[name].kind != EAGLE3


# =============================================================================================
# values


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
        """(lm_head_share, lm_head_total_share) per cycle (docs/methods.md §1), at the median context."""
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
# the pass


def environment(device: torch.device, dtype: torch.dtype, load_before: float) -> dict:
    threads = torch.get_num_threads()
    load_after = load_average()
    return {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "threads": threads,
            "clock": clock_description(device),
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
        return 1 if DRAFTERS[self.name].kind == BASELINE else self.tree.max_nodes

    @property
    def first_rows(self) -> float:
        """Mean L_{c−1} + 1 over cycles that have a predecessor (1 where the plans have none)."""
        rows = [a + 1 for p in self.plans for a in p.accepted[:-1]]
        return statistics.mean(rows) if rows else 1.0


def profile_method(spec: MethodSpec, target: Target, settings: ProfileSettings, clock: Clock) -> MethodProfile:
    """Forward terms (EAGLE-style drafters, with a routed / subset head's rows; early exit's layers) and
    no-op loop costs of one method on ``target``. Oracles and model-free drafters: the no-op loop only."""
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
    elif DRAFTERS[spec.name].kind == EARLY_EXIT:
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
                         environment(target.device, target.dtype, load_before))


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
    from coral_bench.run.specs import DrafterSpec

    config = read_config(run_dir)
    samples = rd.read_samples(run_dir)
    seed = config.seed
    specs = [DrafterSpec(VANILLA, VANILLA, None, TreeShape("chain", 1))]
    specs += [DrafterSpec(d.label, d.name, d.checkpoint, _tree_or_none(d.tree)) for d in config.drafters]
    specs += [s for s in extra if s.label not in {x.label for x in specs}]
    out = []
    for s in specs:
        tree = tree_for(s.name, s.tree) if s.name in DRAFTERS else (s.tree or TreeShape("chain", 1))
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
    from coral_bench.run.targets import load_target

    config = read_config(run_dir)
    samples = rd.read_samples(run_dir)
    if not samples:
        raise ValueError(f"{run_dir} holds no samples to profile against")
    _set_threads(config.threads)
    settings = settings or ProfileSettings()
    if own_lengths:
        contexts, prompts = run_contexts(samples)
        settings = ProfileSettings(settings.nodes, contexts, prompts, settings.repeats, settings.noop_cycles,
                                   settings.seed)
    loaded = loaded or load_target(config.target, config.dtype, config.device)
    clock = clock_for(loaded.target.device)
    report = profile_pass(loaded.target, loaded.name, run_methods(run_dir, extra), settings, clock)
    write_profile(run_dir, report)
    return report


def ensure_profile(run_dir: Path, settings: ProfileSettings | None = None, loaded: Any = None) -> dict:
    """``profile.json`` of the run, running the profile pass first when there is none."""
    return read_profile(run_dir) or profile_run(run_dir, settings, loaded=loaded).to_json()


def profile_standalone(target_name: str, dtype: str | None, device: str | None, threads: int | None,
                       drafters: Sequence[Any], tree: TreeShape | None, settings: ProfileSettings) -> ProfileReport:
    """The profile pass without a run: synthetic acceptance plans, the given lengths."""
    from coral_bench.run.targets import load_target

    _set_threads(threads)
    loaded = load_target(target_name, dtype, device)
    methods = standalone_methods(drafters, tree, settings)
    return profile_pass(loaded.target, loaded.name, methods, settings, clock_for(loaded.target.device))


def standalone_methods(drafters: Sequence[Any], tree: TreeShape | None, settings: ProfileSettings,
                       new_tokens: int = 64) -> list[MethodSpec]:
    """vanilla + ``drafters`` (DrafterSpecs; default: a random-weight ``eagle``) with synthetic plans."""
    from coral_bench.run.specs import DrafterSpec

    prompt = settings.prompts[len(settings.prompts) // 2]
    specs = [DrafterSpec(VANILLA, VANILLA, None, TreeShape("chain", 1))]
    specs += list(drafters) or [DrafterSpec("eagle", "eagle", None, None)]
    out = []
    for s in specs:
        shape = tree_for(s.name, s.tree, run_default=tree)
        out.append(MethodSpec(s.label, s.name, s.checkpoint, shape,
                              tuple(synthetic_plans(shape, prompt, new_tokens)), settings.seed))
    return out
