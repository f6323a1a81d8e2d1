"""``coral-bench run --tree auto``: pick an EAGLE-style drafter's tree from the cost model (docs/methods.md §7).

For each candidate of a small grid (top_k × depth × total_tokens) the cost model predicts the speedup
from (a) a quick profile pass on this machine — T_V(n, ctx), T_pf(P), the drafter's forwards and the
no-op loop at that tree, few repeats — and (b) the drafter's acceptance at T = 0 replayed
(``replay.replay_greedy``) against vanilla's greedy output on a few untimed development prompts
(suite ``mtbench-dev``, first turns, short outputs). The candidate with the highest predicted speedup
wins (ties: fewer tree nodes); the choice and every candidate's prediction are recorded in the run's
config (``tree_auto``) as provenance.

Only EAGLE-style drafters without their own ``@tree`` are tuned. Vanilla takes no tree; model-free
chain drafters (prompt-lookup), oracles and early exit keep their registry defaults (documented, not tuned).
Acceptance is replayed at T = 0 even for a sampled run: selection is a development-split decision.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from coral_bench.run.chat import turn_prompt
from coral_bench.core.clock import Clock, is_busy, load_average
from coral_bench.core.decode import generate
from coral_bench.core.drafter import DrafterSettings, generator_for
from coral_bench.drafters.registry import build_drafter, drafter_entry
from coral_bench.run.targets import LoadedTarget
from coral_bench.run.specs import ChosenTree, DrafterSpec
from coral_bench.core.sampling import SamplingConfig
from coral_bench.costmodel.speedup import SampleShape, predict, shape_cycles
from coral_bench.run.suites import limit, load_suite
from coral_bench.core.tree import TreeShape
from .machine import machine_fingerprint
from .tree_cache import TreeCache

DEV_SUITE = "mtbench-dev"


@dataclass(frozen=True)
class AutoSettings:
    """The grid and the budget of one selection (recorded with the choice)."""

    top_k: tuple[int, ...] = (2, 4, 8)
    depth: tuple[int, ...] = (2, 3, 5)
    total_tokens: tuple[int, ...] = (6, 8, 12, 16)
    chains: tuple[int, ...] = (2, 3, 4, 5)  # chain:N candidates (N drafted tokens in a line)
    dev_suite: str = DEV_SUITE
    questions: int = 4  # first turns of the dev suite's first questions
    max_new_tokens: int = 48  # per dev prompt (vanilla's greedy output, untimed)
    repeats: int = 1  # timed repeats per profiled point
    noop_cycles: int = 40

    def __post_init__(self) -> None:
        if not (self.top_k and self.depth and self.total_tokens) or self.questions < 1 or self.max_new_tokens < 2:
            raise ValueError("--tree auto needs a non-empty grid, >= 1 dev question and >= 2 new tokens")

    def candidates(self) -> tuple[TreeShape, ...]:
        """Dynamic trees of the grid whose total_tokens − 1 does not exceed the candidates EAGLE-2 scores
        (k + depth·k²: larger would verify the same tree as the smaller entry), after the chains."""
        out = [TreeShape("chain", depth=n) for n in self.chains]
        for k in self.top_k:
            for d in self.depth:
                for t in self.total_tokens:
                    if t - 1 <= k + d * k * k:
                        out.append(TreeShape("dynamic", depth=d, top_k=k, total_tokens=t))
        return tuple(out)

    @classmethod
    def for_device(cls, device_type: str) -> "AutoSettings":
        """The grid for a device: CPU trees stay small (verifying a node costs a 2-core CPU nearly as much
        as a token), a GPU verifies ~60 nodes for the price of one, so its grid reaches 64 nodes."""
        if device_type == "cuda":
            return cls(top_k=(4, 8, 10), depth=(3, 5, 7), total_tokens=(16, 32, 48, 64), chains=())
        return cls()

    def to_json(self) -> dict:
        return {"top_k": list(self.top_k), "depth": list(self.depth), "total_tokens": list(self.total_tokens),
                "chains": list(self.chains),
                "dev_suite": self.dev_suite, "questions": self.questions, "max_new_tokens": self.max_new_tokens,
                "repeats": self.repeats, "noop_cycles": self.noop_cycles}


@dataclass(frozen=True)
class CandidateScore:
    tree: TreeShape
    speedup: float | None  # predicted, prefill included (None: not predictable)
    tau: float | None  # replayed pooled τ on the dev prompts

    def to_json(self) -> dict:
        return {"tree": self.tree.describe(), "speedup_predicted": self.speedup, "tau": self.tau}


@dataclass(frozen=True)
class TreeChoice:
    """One drafter's selected tree and the predictions it was chosen from."""

    label: str
    tree: TreeShape
    scores: tuple[CandidateScore, ...]
    details: dict[str, Any]  # settings, dev prompts, machine load

    def to_json(self) -> dict:
        best = next((s for s in self.scores if s.tree == self.tree), None)
        return {"tree": self.tree.describe(), **self.details,
                "speedup_predicted": best.speedup if best else None, "tau_dev": best.tau if best else None,
                "grid": [s.to_json() for s in self.scores]}

    @classmethod
    def from_json(cls, label: str, data: dict) -> "TreeChoice":
        scores = tuple(CandidateScore(TreeShape.parse(s["tree"]), s["speedup_predicted"], s["tau"])
                       for s in data.get("grid", []))
        details = {k: v for k, v in data.items() if k not in ("tree", "grid", "speedup_predicted", "tau_dev")}
        return cls(label, TreeShape.parse(data["tree"]), scores, details)


def choose(candidates: Sequence[TreeShape], score: Callable[[TreeShape], CandidateScore]) -> tuple[TreeShape, tuple[CandidateScore, ...]]:
    """The candidate with the highest predicted speedup (ties: fewer nodes, then grid order), with every score."""
    scores = tuple(score(t) for t in candidates)
    usable = [i for i, s in enumerate(scores) if s.speedup is not None]
    if not usable:
        raise ValueError("--tree auto: the cost model could not predict any candidate tree")
    best = max(usable, key=lambda i: (scores[i].speedup, -scores[i].tree.max_nodes, -i))
    return scores[best].tree, scores


# ---------------------------------------------------------------------------------------------
# measured scores on a loaded target


@dataclass(frozen=True)
class DevSample:
    prompt: tuple[int, ...]
    output: tuple[int, ...]  # vanilla's greedy output


def dev_samples(loaded: LoadedTarget, settings: AutoSettings, clock: Clock) -> tuple[DevSample, ...]:
    """Vanilla's greedy outputs on the dev prompts (untimed: only the tokens are used)."""
    suite = limit(load_suite(settings.dev_suite), settings.questions)
    vanilla = build_drafter(loaded.target, DrafterSettings("vanilla", TreeShape("chain", 1)))
    out = []
    for q in suite.questions:
        prompt = turn_prompt(loaded.tokenizer, suite, q, 0, [])
        gen = generate(loaded.target, vanilla, prompt, settings.max_new_tokens, SamplingConfig(), generator_for(0),
                       clock)
        out.append(DevSample(tuple(prompt), gen.ids))
    return tuple(out)


def _vanilla_shape(i: int, s: DevSample) -> SampleShape:
    n = len(s.output) - 1
    return SampleShape(f"dev{i}", 0, len(s.prompt), len(s.output), shape_cycles(len(s.prompt), [1] * n, [0] * n, [1] * n))


@dataclass(frozen=True)
class MachineCosts:
    """What every drafter's scores share: the dev samples, the target's terms and vanilla's on this machine."""

    samples: tuple[DevSample, ...]
    profile: Any  # profile.ProfileSettings of the candidates' node counts and the dev contexts
    target_costs: Any
    vanilla: tuple[SampleShape, ...]
    vanilla_costs: Any


def machine_costs(loaded: LoadedTarget, settings: AutoSettings, candidates: Sequence[TreeShape], clock: Clock,
                  seed: int = 0, samples: Sequence[DevSample] | None = None) -> MachineCosts:
    """The dev samples (vanilla's greedy outputs) and a quick profile of the target and of vanilla."""
    from coral_bench.costmodel import profile as pf
    from coral_bench.costmodel.noop import NoopPlan

    samples = tuple(samples) if samples is not None else dev_samples(loaded, settings, clock)
    target = loaded.target
    prompts = sorted(len(s.prompt) for s in samples)
    ends = sorted(len(s.prompt) + len(s.output) for s in samples)
    contexts = tuple(sorted({prompts[len(prompts) // 2], ends[len(ends) // 2]}))
    nodes = tuple(sorted({1, *(t.max_nodes for t in candidates)}))
    profile = pf.ProfileSettings(nodes, contexts, (prompts[0], prompts[-1]) if prompts[0] < prompts[-1] else
                                 (prompts[0],), settings.repeats, settings.noop_cycles, seed)
    target_costs, _ = pf.profile_target(target, profile, clock, [1])
    van_plans = tuple(NoopPlan(len(s.prompt), len(s.output), (0,) * (len(s.output) - 1)) for s in samples)
    van_costs = pf.profile_method(pf.MethodSpec("vanilla", "vanilla", None, TreeShape("chain", 1), van_plans, seed),
                                  target, profile, clock).costs
    return MachineCosts(samples, profile, target_costs, tuple(_vanilla_shape(i, s) for i, s in enumerate(samples)),
                        van_costs)


def measured_scorer(loaded: LoadedTarget, spec: DrafterSpec, machine: MachineCosts, clock: Clock,
                    seed: int = 0) -> Callable[[TreeShape], CandidateScore]:
    """A scorer for ``choose``: replayed τ on the dev samples and the drafter's cost terms at that tree."""
    from coral_bench.costmodel import profile as pf
    from coral_bench.costmodel.noop import NoopPlan
    from coral_bench.costmodel.replay import replay_greedy

    target = loaded.target

    def score(tree: TreeShape) -> CandidateScore:
        drafter = build_drafter(target, DrafterSettings(spec.name, tree, spec.checkpoint, seed))
        shapes, plans, emitted, cycles = [], [], 0, 0
        for i, s in enumerate(machine.samples):
            replayed, _ = replay_greedy(target, drafter, list(s.prompt), s.output)
            n = [c.nodes for c in replayed]
            acc = [c.accepted for c in replayed]
            em = [c.emitted for c in replayed]
            shapes.append(SampleShape(f"dev{i}", 0, len(s.prompt), len(s.output),
                                      shape_cycles(len(s.prompt), n, acc, em, [c.head_union for c in replayed])))
            if replayed:
                plans.append(NoopPlan(len(s.prompt), len(s.output), tuple(acc)))
            emitted, cycles = emitted + sum(em), cycles + len(replayed)
        method = pf.profile_method(pf.MethodSpec(spec.label, spec.name, spec.checkpoint, tree, tuple(plans), seed),
                                   target, machine.profile, clock)
        if method.costs is None or machine.vanilla_costs is None or not plans:
            return CandidateScore(tree, None, emitted / cycles if cycles else None)
        pred = predict(shapes, machine.vanilla, machine.target_costs, method.costs, machine.vanilla_costs)
        return CandidateScore(tree, pred.speedup, pred.tau)

    return score


@torch.inference_mode()
def auto_tree(loaded: LoadedTarget, spec: DrafterSpec, settings: AutoSettings, clock: Clock, seed: int = 0,
              samples: Sequence[DevSample] | None = None, run_suite: str | None = None,
              machine: MachineCosts | None = None) -> TreeChoice:
    """Select the tree of EAGLE-style drafter ``spec`` on this machine (module doc)."""
    load_before = load_average()
    candidates = settings.candidates()
    machine = machine or machine_costs(loaded, settings, candidates, clock, seed, samples)
    tree, scores = choose(candidates, measured_scorer(loaded, spec, machine, clock, seed))
    load_after = load_average()
    details = {"settings": settings.to_json(), "dev_prompts": len(machine.samples),
               "dev_new_tokens": statistics.mean(len(s.output) for s in machine.samples),
               "load_average_before": round(load_before, 2), "load_average_after": round(load_after, 2),
               "busy_machine": is_busy(max(load_before, load_after)),
               "selected_on_the_reported_suite": run_suite == settings.dev_suite}
    return TreeChoice(spec.label, tree, scores, details)


def drafter_identity(target, spec: DrafterSpec, seed: int = 0) -> dict:
    """What a cached choice is valid for besides the machine: the drafter's name, its checkpoint spec (head
    options included) and the sha256 of the weights it loads (the seed, for random weights)."""
    drafter = build_drafter(target, DrafterSettings(spec.name, TreeShape("chain", 1), spec.checkpoint, seed))
    info = getattr(drafter, "info", None)
    record = info.record() if hasattr(info, "record") else {}
    weights = record.get("weights_sha256")
    return {"name": spec.name, "checkpoint": spec.checkpoint, "weights_sha256": weights, "head": record.get("head"),
            **({} if weights else {"seed": seed})}


def tunes_any(drafters: Sequence[DrafterSpec]) -> bool:
    """Whether ``--tree auto`` has a tree to choose: an EAGLE-style drafter without its own ``@tree``."""
    return any(spec.tree is None and drafter_entry(spec.name).tree_tunable for spec in drafters)


def tree_chooser(drafters: Sequence[DrafterSpec], settings: AutoSettings, seed: int = 0,
                 cache: TreeCache | None = None, retune: bool = False,
                 progress: Callable[[str], None] | None = None):
    """``run_suite``'s ``choose_trees`` for ``--tree auto`` (the default): for every drafter whose kind takes a
    tuned tree (the registry says which) and that has no ``@tree`` of its own, the choice cached for this
    machine and drafter (``tree_cache``), else :func:`auto_tree`, measured once and cached. ``progress`` is
    told which drafter is being measured (minutes each on a small CPU)."""

    def choose_trees(loaded: LoadedTarget, clock: Clock, suite) -> dict[str, ChosenTree]:
        fingerprint = machine_fingerprint(loaded.target, loaded.dtype, torch.get_num_threads())
        wanted = settings.to_json()
        shared: list[MachineCosts] = []  # measured on the first cache miss, then shared by every drafter
        chosen = {}
        for spec in drafters:
            if not tunes_any([spec]):
                continue
            identity = drafter_identity(loaded.target, spec, seed)
            hit = cache.load(fingerprint, identity, wanted) if cache is not None and not retune else None
            if hit is not None:
                record = dict(hit.record) | {"cache": {"status": "hit", "measured_at": hit.measured_at,
                                                       "machine": fingerprint}}
            else:
                if progress is not None:
                    progress(f"choosing the tree for {spec.label} on this machine "
                             f"({len(settings.candidates())} candidates; cached afterwards)")
                if not shared:
                    shared.append(machine_costs(loaded, settings, settings.candidates(), clock, seed))
                choice = auto_tree(loaded, spec, settings, clock, seed, run_suite=suite.name, machine=shared[0])
                record = choice.to_json()
                status = "measured"
                if cache is not None and not choice.details["busy_machine"]:
                    measured_at = cache.store(fingerprint, identity, wanted, record).measured_at
                else:
                    measured_at, status = None, "measured, not cached" + (" (busy machine)" if cache else "")
                record |= {"cache": {"status": status, "measured_at": measured_at, "machine": fingerprint}}
            record["selected_on_the_reported_suite"] = suite.name == settings.dev_suite
            chosen[spec.label] = ChosenTree(TreeShape.parse(record["tree"]), record)
        return chosen

    return choose_trees
