"""``vanilla``: no drafting. Every cycle verifies the root alone: plain autoregressive decoding."""

from __future__ import annotations

from coral_bench.core.target import Target, TargetOutput
from coral_bench.core.tree import DraftTree, Verdict
from coral_bench.core.drafter import DraftContext, DrafterSettings


class VanillaDrafter:
    """The baseline: one-node trees, which the Target runs through its plain causal path."""

    def __init__(self, settings: DrafterSettings):
        self.settings = settings

    def begin(self, context: DraftContext) -> None:
        pass

    def propose(self, root: int) -> DraftTree:
        return DraftTree.root_only(root)

    def commit(self, verdict: Verdict, scored: TargetOutput) -> None:
        pass

    def parameter_count(self) -> int:
        return 0


def build_vanilla(target: Target, settings: DrafterSettings) -> VanillaDrafter:
    return VanillaDrafter(settings)
