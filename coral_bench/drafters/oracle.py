"""Test drafters that draft from the known greedy continuation, at no drafting cost.

``oracle`` proposes the target's own greedy continuation: every draft token is accepted, so τ =
tree levels + 1 (N + 1 for ``chain:N``) except where output stops. For a dynamic tree shape the
correct chain is padded with wrong siblings up to ``total_tokens`` nodes, so verification costs what
a real drafter's tree of that shape costs: the report's upper bound ("a perfect, free drafter of
this tree shape on this hardware").

``noisy-oracle`` builds random branching trees with the right token at a random sibling and a random
depth, sometimes missing, so tests exercise branching commits, bonus tokens at leaves, EOS inside an
accepted chunk and the ``max_new_tokens`` cut inside a chunk.

The continuation comes from ``DraftContext.reference`` (vanilla's greedy output for the same prompt,
computed untimed). Once the output leaves the reference (sampling, a near-tie), the drafters keep
proposing, now wrong: decoding stays lossless, only acceptance drops.
"""

from __future__ import annotations

import torch

from ..target import Target, TargetOutput
from ..tree import DraftTree, Verdict
from .base import DraftContext, DrafterError, DrafterSettings, generator_for


class _ReferenceCursor:
    """Where the current root sits in the reference continuation, or off it."""

    def __init__(self) -> None:
        self.reference: tuple[int, ...] = ()
        self.pos = 0
        self.on_track = False

    def begin(self, context: DraftContext) -> None:
        if context.reference is None:
            raise DrafterError("oracle drafters need the reference greedy continuation (DraftContext.reference)")
        self.reference = context.reference
        self.pos = 0
        self.on_track = bool(self.reference) and self.reference[0] == context.first_token

    def truth(self, root: int, length: int) -> list[int]:
        """The next ``length`` correct tokens after ``root`` (fewer near the end of the reference)."""
        if self.on_track and self.pos < len(self.reference) and self.reference[self.pos] == root:
            return list(self.reference[self.pos + 1 : self.pos + 1 + length])
        self.on_track = False
        return []

    def advance(self, verdict: Verdict) -> None:
        self.pos += len(verdict.tokens)


def _wrong_tokens(vocab: int, avoid: set[int], count: int, gen: torch.Generator) -> list[int]:
    picks: list[int] = []
    while len(picks) < count:
        tok = int(torch.randint(3, vocab, (1,), generator=gen))  # skip specials: keep EOS where the truth puts it
        if tok not in avoid:
            avoid.add(tok)
            picks.append(tok)
    return picks


class OracleDrafter:
    def __init__(self, settings: DrafterSettings, vocab_size: int):
        self.settings = settings
        self.vocab_size = vocab_size
        self._cursor = _ReferenceCursor()
        self._gen = generator_for(settings.seed)

    def begin(self, context: DraftContext) -> None:
        self._cursor.begin(context)

    def propose(self, root: int) -> DraftTree:
        shape = self.settings.tree
        truth = self._cursor.truth(root, shape.levels)
        tokens, parents = [root, *truth], list(range(-1, len(truth)))
        if shape.kind == "dynamic":  # wrong siblings under the chain, level by level, up to total_tokens
            level = 0
            while len(tokens) < shape.total_tokens and level <= len(truth):
                parent = level  # node index of the chain node at this level
                siblings = {tokens[i] for i in range(1, len(tokens)) if parents[i] == parent}
                room = min(shape.top_k - len(siblings), shape.total_tokens - len(tokens))
                for tok in _wrong_tokens(self.vocab_size, set(siblings), max(room, 0), self._gen):
                    tokens.append(tok)
                    parents.append(parent)
                level += 1
        return DraftTree(tuple(tokens), tuple(parents), forwards=0)

    def commit(self, verdict: Verdict, scored: TargetOutput) -> None:
        self._cursor.advance(verdict)

    def parameter_count(self) -> int:
        return 0


class NoisyOracleDrafter(OracleDrafter):
    """Random branching trees around the truth (tests: exercises every commit path)."""

    def propose(self, root: int) -> DraftTree:
        gen = self._gen

        def draw(low: int, high: int) -> int:  # uniform integer in [low, high]
            return int(torch.randint(low, high + 1, (1,), generator=gen))

        levels = draw(1, self.settings.tree.levels)
        truth = self._cursor.truth(root, levels)
        truth = truth[: draw(0, len(truth))]  # correct only down to a random depth
        tokens, parents = [root], [-1]
        frontier, right = [0], 0  # right: the node carrying the truth at the previous level (-1: none)
        for level in range(levels):
            next_frontier, next_right = [], -1
            for parent in frontier:
                on_truth = parent == right and level < len(truth)
                kids = _wrong_tokens(self.vocab_size, {truth[level]} if on_truth else set(),
                                     draw(1, 3) if parent == right else draw(0, 1), gen)
                if on_truth:
                    kids.insert(draw(0, len(kids)), truth[level])
                for tok in kids:
                    tokens.append(tok)
                    parents.append(parent)
                    next_frontier.append(len(tokens) - 1)
                    if on_truth and tok == truth[level]:
                        next_right = len(tokens) - 1
            frontier, right = next_frontier, next_right
            if not frontier:
                break
        return DraftTree(tuple(tokens), tuple(parents), forwards=0)


def build_oracle(target: Target, settings: DrafterSettings) -> OracleDrafter:
    return OracleDrafter(settings, target.vocab_size)


def build_noisy_oracle(target: Target, settings: DrafterSettings) -> NoisyOracleDrafter:
    return NoisyOracleDrafter(settings, target.vocab_size)
