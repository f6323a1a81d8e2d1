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

DEV_SUITE = "mtbench-dev"


@dataclass(frozen=True)
class AutoSettings:
    """The grid and the budget of one selection (recorded with the choice)."""

    top_k: tuple[int, ...] = (2, 4, 8)
    depth: tuple[int, ...] = (2, 3, 5)
    total_tokens: tuple[int, ...] = (8, 16, 32)
    dev_suite: str = DEV_SUITE
    questions: int = 3  # first turns of the dev suite's first questions
    max_new_tokens: int = 32  # per dev prompt (vanilla's greedy output, untimed)
    repeats: int = 1  # timed repeats per profiled point
    noop_cycles: int = 40

    def __post_init__(self) -> None:
        if not (self.top_k and self.depth and self.total_tokens) or self.questions < 1 or self.max_new_tokens < 2:
            raise ValueError("--tree auto needs a non-empty grid, >= 1 dev question and >= 2 new tokens")

    def candidates(self) -> tuple[TreeShape, ...]:
        """Dynamic trees of the grid whose total_tokens − 1 does not exceed the candidates EAGLE-2 scores
        (k + depth·k²: larger would verify the same tree as the smaller entry)."""
        out = []
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
            return cls(top_k=(4, 8, 10), depth=(3, 5, 7), total_tokens=(16, 32, 48, 64))
        return cls()

    def to_json(self) -> dict:
        return {"top_k": list(self.top_k), "depth": list(self.depth), "total_tokens": list(self.total_tokens),
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
        return {"tree": self.tree.describe(), "grid": [s.to_json() for s in self.scores], **self.details}

    @classmethod
    def from_json(cls, label: str, data: dict) -> "TreeChoice":
        scores = tuple(CandidateScore(TreeShape.parse(s["tree"]), s["speedup_predicted"], s["tau"])
                       for s in data.get("grid", []))
        details = {k: v for k, v in data.items() if k not in ("tree", "grid")}
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


def measured_scorer(loaded: LoadedTarget, spec: DrafterSpec, samples: Sequence[DevSample], settings: AutoSettings,
                    candidates: Sequence[TreeShape], clock: Clock, seed: int = 0) -> Callable[[TreeShape], CandidateScore]:
    """A scorer for ``choose``: replayed τ on ``samples`` and cost terms from a quick profile of this machine."""
    from coral_bench.costmodel import profile as pf
    from coral_bench.costmodel.noop import NoopPlan
    from coral_bench.costmodel.replay import replay_greedy

    target = loaded.target
    prompts = sorted(len(s.prompt) for s in samples)
    ends = sorted(len(s.prompt) + len(s.output) for s in samples)
    contexts = tuple(sorted({prompts[len(prompts) // 2], ends[len(ends) // 2]}))
    nodes = tuple(sorted({1, *(t.max_nodes for t in candidates)}))
    profile = pf.ProfileSettings(nodes, contexts, (prompts[0], prompts[-1]) if prompts[0] < prompts[-1] else
                                 (prompts[0],), settings.repeats, settings.noop_cycles, seed)
    target_costs, _ = pf.profile_target(target, profile, clock, [1])
    vanilla = [_vanilla_shape(i, s) for i, s in enumerate(samples)]
    van_plans = tuple(NoopPlan(len(s.prompt), len(s.output), (0,) * (len(s.output) - 1)) for s in samples)
    van_costs = pf.profile_method(pf.MethodSpec("vanilla", "vanilla", None, TreeShape("chain", 1), van_plans, seed),
                                  target, profile, clock).costs

    def score(tree: TreeShape) -> CandidateScore:
        drafter = build_drafter(target, DrafterSettings(spec.name, tree, spec.checkpoint, seed))
        shapes, plans, emitted, cycles = [], [], 0, 0
        for i, s in enumerate(samples):
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
                                   target, profile, clock)
        if method.costs is None or van_costs is None or not plans:
            return CandidateScore(tree, None, emitted / cycles if cycles else None)
        pred = predict(shapes, vanilla, target_costs, method.costs, van_costs)
        return CandidateScore(tree, pred.speedup, pred.tau)

    return score


@torch.inference_mode()
def auto_tree(loaded: LoadedTarget, spec: DrafterSpec, settings: AutoSettings, clock: Clock, seed: int = 0,
              samples: Sequence[DevSample] | None = None, run_suite: str | None = None) -> TreeChoice:
    """Select the tree of EAGLE-style drafter ``spec`` on this machine (module doc)."""
    load_before = load_average()
    candidates = settings.candidates()
    samples = samples if samples is not None else dev_samples(loaded, settings, clock)
    tree, scores = choose(candidates, measured_scorer(loaded, spec, samples, settings, candidates, clock, seed))
    load_after = load_average()
    details = {"settings": settings.to_json(), "dev_prompts": len(samples),
               "dev_new_tokens": statistics.mean(len(s.output) for s in samples),
               "load_average_before": round(load_before, 2), "load_average_after": round(load_after, 2),
               "busy_machine": is_busy(max(load_before, load_after)),
               "selected_on_the_reported_suite": run_suite == settings.dev_suite}
    return TreeChoice(spec.label, tree, scores, details)


def tree_chooser(drafters: Sequence[DrafterSpec], settings: AutoSettings, seed: int = 0):
    """``run_suite``'s ``choose_trees`` for ``--tree auto``: :func:`auto_tree` for every drafter whose kind
    takes a tuned tree (the registry says which) and that has no ``@tree`` of its own."""

    def choose_trees(loaded: LoadedTarget, clock: Clock, suite) -> dict[str, ChosenTree]:
        chosen = {}
        for spec in drafters:
            if spec.tree is None and drafter_entry(spec.name).tree_tunable:
                choice = auto_tree(loaded, spec, settings, clock, seed, run_suite=suite.name)
                chosen[spec.label] = ChosenTree(choice.tree, choice.to_json())
        return chosen

    return choose_trees
