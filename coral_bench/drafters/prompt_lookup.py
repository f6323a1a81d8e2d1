"""``prompt-lookup``: model-free drafting by n-gram match in the prompt and the output so far.

The last n tokens (n from ``max_ngram`` down to ``min_ngram``) are searched in the history; the
tokens that followed their most recent earlier occurrence become a chain draft, at most
``tree.depth`` long (``chain:N``). No match: a root-only tree, which costs what a vanilla step costs.
"""

from __future__ import annotations

import torch

from coral_bench.core.target import Target, TargetOutput
from coral_bench.core.tree import DraftTree, Verdict
from coral_bench.core.drafter import DraftContext, DrafterSettings

MAX_NGRAM = 3
MIN_NGRAM = 1


class PromptLookupDrafter:
    def __init__(self, settings: DrafterSettings, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM):
        self.settings = settings
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self._history: list[int] = []

    def begin(self, context: DraftContext) -> None:
        self._history = [*context.prompt_ids, context.first_token]

    def propose(self, root: int) -> DraftTree:
        return DraftTree.chain(root, self._match(self.settings.tree.depth))

    def commit(self, verdict: Verdict, scored: TargetOutput) -> None:
        self._history.extend(verdict.tokens)

    def parameter_count(self) -> int:
        return 0

    def _match(self, length: int) -> list[int]:
        hist = torch.tensor(self._history, dtype=torch.long)
        size = hist.numel()
        for n in range(min(self.max_ngram, size - 1), self.min_ngram - 1, -1):
            windows = hist[: size - 1].unfold(0, n, 1)  # [W, n]; the suffix itself is excluded
            hits = (windows == hist[size - n :]).all(dim=1).nonzero()
            if hits.numel():
                start = int(hits[-1]) + n  # most recent occurrence: the closest context
                return hist[start : start + length].tolist()
        return []


def build_prompt_lookup(target: Target, settings: DrafterSettings) -> PromptLookupDrafter:
    return PromptLookupDrafter(settings)
