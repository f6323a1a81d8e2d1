"""The drafter protocol: how the one speculative loop talks to every drafter.

Per sample: ``begin(context)`` once after the target's prefill, then per cycle ``propose(root)`` →
(target scores and verifies) → ``commit(verdict, scored)``. ``propose`` does all drafting work of a
cycle, including the forward over slots accepted in the previous cycle; ``commit`` only records
(tokens, features), so drafting time is measured in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from coral_bench.core.target import Target, TargetOutput
from coral_bench.core.tree import DraftTree, TreeShape, Verdict


@dataclass(frozen=True)
class DraftContext:
    """What a drafter learns when a sample starts."""

    prompt_ids: tuple[int, ...]  # x_0 … x_{P−1}
    first_token: int  # x_P: the target's token after prefill, the first root
    prefill: TargetOutput  # features [P, H] of the prompt
    # Oracle drafters only: (context ids, n) → the target's greedy continuation of that context, computed
    # outside the timed path (the decode loop excludes the time it takes).
    reference: Callable[[tuple[int, ...], int], tuple[int, ...]] | None = None


@dataclass(frozen=True)
class DrafterSettings:
    """How a drafter is built: resolved from ``--drafter NAME[:CHECKPOINT][@tree=...]`` and defaults."""

    name: str
    tree: TreeShape
    checkpoint: str | None = None
    seed: int = 0
    embedding: str = "target"  # EAGLE-style drafters: "target" or "checkpoint" token embedding (docs/methods.md §2)


class Drafter(Protocol):
    """A source of draft trees. Implementations live one per file in ``coral_bench/drafters/``."""

    settings: DrafterSettings

    def begin(self, context: DraftContext) -> None:
        """Start a sample; may run the drafter's own prefill."""

    def propose(self, root: int) -> DraftTree:
        """Build the tree for this cycle, rooted at ``root`` (the last emitted token)."""

    def commit(self, verdict: Verdict, scored: TargetOutput) -> None:
        """Record what the target accepted (``scored.features`` are per tree node)."""

    def parameter_count(self) -> int:
        """Trainable drafter parameters (0 for model-free drafters)."""


DrafterFactory = Callable[[Target, DrafterSettings], Drafter]


class DrafterError(ValueError):
    """A drafter that cannot be built (unknown name, bad checkpoint, missing reference...)."""


def generator_for(seed: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
