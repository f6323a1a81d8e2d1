"""The one registry of drafters: name → (factory, default tree shape, description).

CPU defaults are small (METHODS.md §3 "Sizes for a CPU"): on a 2-core CPU the verification cost
grows with tree size, so GPU-sized trees (60 nodes) lose.
"""

from __future__ import annotations

from dataclasses import dataclass

from coral_bench.core.target import Target
from coral_bench.core.tree import TreeShape
from .base import Drafter, DrafterError, DrafterFactory, DrafterSettings
from .eagle import build_eagle, build_routed
from .early_exit import build_early_exit
from .oracle import build_noisy_oracle, build_oracle
from .prompt_lookup import build_prompt_lookup
from .shipped import with_shipped_checkpoint
from .vanilla import build_vanilla

CPU_TREE = TreeShape(kind="dynamic", top_k=4, depth=3, total_tokens=16)


@dataclass(frozen=True)
class DrafterEntry:
    factory: DrafterFactory
    default_tree: TreeShape
    description: str
    needs_checkpoint: bool = False


def _entries() -> dict[str, DrafterEntry]:
    entries = {
        "vanilla": DrafterEntry(build_vanilla, TreeShape(kind="chain", depth=1), "no drafting: the baseline"),
        "prompt-lookup": DrafterEntry(build_prompt_lookup, TreeShape(kind="chain", depth=4),
                                      "n-gram match in prompt and output (model-free)"),
        "oracle": DrafterEntry(build_oracle, CPU_TREE, "the target's own greedy continuation: upper bound (test)"),
        "noisy-oracle": DrafterEntry(build_noisy_oracle, CPU_TREE, "random trees around the truth (test)"),
        "early-exit": DrafterEntry(build_early_exit, TreeShape(kind="chain", depth=3),
                                   "the target's first N layers + norm + LM head (early-exit:N; default N = layers/4)"),
    }
    eagle_like = {
        "eagle": "EAGLE-style drafter (random weights without a checkpoint)",
        "eagle2": "EAGLE-2 drafter: EAGLE single-step training, dynamic tree",
        "hass": "HASS drafter: multi-step harmonised training",
        "coral": "CORAL drafter: HASS + cross-step representation alignment",
    }
    for name, text in eagle_like.items():
        entries[name] = DrafterEntry(build_eagle, CPU_TREE, text, needs_checkpoint=name != "eagle")
    entries["coral-router"] = DrafterEntry(
        build_routed, CPU_TREE, "CORAL drafter with its LM-head router (a train-router checkpoint; "
        "@router_k=K, @score=renorm|calibrated); the same checkpoint runs unrouted as coral", needs_checkpoint=True)
    return entries


DRAFTERS: dict[str, DrafterEntry] = _entries()


def build_drafter(target: Target, settings: DrafterSettings) -> Drafter:
    entry = DRAFTERS.get(settings.name)
    if entry is None:
        raise DrafterError(f"unknown drafter {settings.name!r}: choose from {', '.join(DRAFTERS)}")
    if entry.needs_checkpoint:
        settings = with_shipped_checkpoint(target.name, settings)
    return entry.factory(target, settings)
