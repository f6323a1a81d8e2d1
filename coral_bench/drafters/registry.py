"""The one registry of drafters: name → :class:`DrafterEntry`, which carries every fact about a drafter.

Everything else asks the entry, never the drafter's name: whether it needs the greedy reference
(oracles), how the cost model models it, whether ``--tree auto`` tunes its tree, its default tree.
A new drafter is its file plus one entry here (docs/extending.md).

CPU defaults are small (docs/methods.md §3 "Sizes for a CPU"): on a 2-core CPU the verification cost
grows with tree size, so GPU-sized trees (60 nodes) lose.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from coral_bench.core.target import Target
from coral_bench.core.tree import TreeShape
from coral_bench.core.drafter import Drafter, DrafterError, DrafterFactory, DrafterSettings
from .eagle import build_eagle, build_routed
from .eagle3 import build_eagle3
from .early_exit import build_early_exit
from .hub import resolve_hub_checkpoint
from .hybrid import build_hybrid
from .oracle import build_noisy_oracle, build_oracle
from .prompt_lookup import build_prompt_lookup
from .shipped import with_shipped_checkpoint
from .vanilla import build_vanilla

CPU_TREE = TreeShape(kind="dynamic", top_k=4, depth=3, total_tokens=16)

# Drafter kinds, by what drafting costs and what it reads (the cost model has one model per kind).
BASELINE = "baseline"  # no drafting: one-node trees (vanilla)
MODEL_FREE = "model-free"  # no forwards: drafting is Python over token ids (prompt lookup)
ORACLE = "oracle"  # reads the target's greedy continuation, computed outside the timed path (tests, bounds)
EARLY_EXIT = "early-exit"  # the target's first layers + norm + LM head
EAGLE = "eagle"  # an EAGLE-style drafter: fc + one decoder layer + LM head (full, subset or routed)
EAGLE3 = "eagle3"  # EAGLE-3: three target layers' features, its own draft-vocabulary head (not in the cost model yet)
KINDS = (BASELINE, MODEL_FREE, ORACLE, EARLY_EXIT, EAGLE, EAGLE3)


@dataclass(frozen=True)
class DrafterEntry:
    factory: DrafterFactory
    default_tree: TreeShape
    description: str
    kind: str  # one of KINDS
    needs_checkpoint: bool = False  # falls back to the drafter shipped for the target (shipped.py)
    shipped_as: str | None = None  # the shipped drafter it falls back to, when not its own name

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown drafter kind {self.kind!r}: one of {', '.join(KINDS)}")

    @property
    def needs_reference(self) -> bool:
        """Whether the runner must hand the drafter the target's greedy continuation."""
        return self.kind == ORACLE

    @property
    def tree_tunable(self) -> bool:
        """Whether ``--tree auto`` chooses this drafter's tree (the others keep their default)."""
        return self.kind == EAGLE


def _entries() -> dict[str, DrafterEntry]:
    entries = {
        "vanilla": DrafterEntry(build_vanilla, TreeShape(kind="chain", depth=1), "no drafting: the baseline", BASELINE),
        "prompt-lookup": DrafterEntry(build_prompt_lookup, TreeShape(kind="chain", depth=4),
                                      "n-gram match in prompt and output (model-free)", MODEL_FREE),
        "oracle": DrafterEntry(build_oracle, CPU_TREE, "the target's own greedy continuation: upper bound (test)",
                               ORACLE),
        "noisy-oracle": DrafterEntry(build_noisy_oracle, CPU_TREE, "random trees around the truth (test)", ORACLE),
        "early-exit": DrafterEntry(build_early_exit, TreeShape(kind="chain", depth=3),
                                   "the target's first N layers + norm + LM head (early-exit:N; default N = layers/4)",
                                   EARLY_EXIT),
    }
    eagle_like = {
        "eagle": "EAGLE-style drafter (random weights without a checkpoint)",
        "eagle2": "EAGLE-2 drafter: EAGLE single-step training, dynamic tree",
        "hass": "HASS drafter: multi-step harmonised training",
        "coral": "CORAL drafter: HASS + cross-step representation alignment",
    }
    for name, text in eagle_like.items():
        entries[name] = DrafterEntry(build_eagle, CPU_TREE, text, EAGLE, needs_checkpoint=name != "eagle")
    entries["coral-router"] = DrafterEntry(
        build_routed, CPU_TREE, "CORAL drafter with its LM-head router (a train-router checkpoint; "
        "@router_k=K, @score=renorm|calibrated); the same checkpoint runs unrouted as coral", EAGLE,
        needs_checkpoint=True)
    entries["hybrid"] = DrafterEntry(
        build_hybrid, CPU_TREE, "a trained EAGLE-style tree with prompt lookup's n-gram chain merged in, in the "
        "same node budget (default: the shipped coral-router; the head follows the checkpoint, @vocab=V: subset)",
        EAGLE, needs_checkpoint=True, shipped_as="coral-router")
    entries["eagle3"] = DrafterEntry(
        build_eagle3, CPU_TREE, "EAGLE-3 drafter: features of three target layers, its own draft-vocabulary head "
        "(public EAGLE-3 / SpecForge / speculators checkpoints; random weights without one, @vocab=V)", EAGLE3)
    return entries


DRAFTERS: dict[str, DrafterEntry] = _entries()


def drafter_entry(name: str) -> DrafterEntry:
    """The registry entry of ``name``; an unknown name is one error line naming the valid ones."""
    entry = DRAFTERS.get(name)
    if entry is None:
        raise DrafterError(f"unknown drafter {name!r}: choose from {', '.join(DRAFTERS)}")
    return entry


def tree_for(name: str, own: TreeShape | None = None, chosen: TreeShape | None = None,
             run_default: TreeShape | None = None) -> TreeShape:
    """The tree drafter ``name`` decodes with, the one rule every command uses: its own ``@tree=``, else the
    tree ``--tree auto`` chose for it, else the run's ``--tree`` (never for the baseline), else its default."""
    entry = drafter_entry(name)
    if entry.kind == BASELINE:
        return entry.default_tree
    return own or chosen or run_default or entry.default_tree


def build_drafter(target: Target, settings: DrafterSettings) -> Drafter:
    entry = drafter_entry(settings.name)
    if entry.kind in (EAGLE, EAGLE3):  # their checkpoint is a folder: ORG/NAME may be its id in the local HF cache
        settings = resolve_hub_checkpoint(settings)
    if entry.needs_checkpoint:
        shipped = with_shipped_checkpoint(target.name, replace(settings, name=entry.shipped_as or settings.name))
        settings = replace(shipped, name=settings.name)
    return entry.factory(target, settings)
