"""Test drafters that draft from the known greedy continuation, at no drafting cost.

``oracle`` proposes the target's own greedy continuation: every draft token is accepted, so τ =
tree levels + 1 (N + 1 for ``chain:N``) except where output stops. For a dynamic tree shape the
correct chain is padded with wrong siblings up to ``total_tokens`` nodes, so verification costs what
a real drafter's tree of that shape costs: the report's upper bound ("a perfect, free drafter of
this tree shape on this hardware").

``noisy-oracle`` builds random branching trees with the right token at a random sibling and a random
depth, sometimes missing, so tests exercise branching commits, bonus tokens at leaves, EOS inside an
accepted chunk and the ``max_new_tokens`` cut inside a chunk.

The continuation comes from ``DraftContext.reference`` (``reference.GreedyReference``: vanilla's output
for the same prompt, or an untimed greedy decode). When the output leaves that line (sampling, or a
bf16 near-tie that tree scoring rounds the other way), the cursor fetches the greedy line of the new
context, so the oracle stays an upper bound.
"""

from __future__ import annotations

import torch

from coral_bench.core.target import Target, TargetOutput
from coral_bench.core.tree import DraftTree, Verdict
from coral_bench.core.drafter import DraftContext, DrafterError, DrafterSettings, generator_for


class _ReferenceCursor:
    """The output so far and the greedy line it is expected to follow."""

    CHUNK = 64  # most tokens fetched at once: a greedy run that stays on its line fetches rarely

    def __init__(self, eos: tuple[int, ...]) -> None:
        self.eos = set(eos)
        self.history: list[int] = []
        self.reference = None
        self._line: tuple[int, ...] = ()  # greedy continuation of history[: self._start]
        self._start = 0
        self._chunk = self.CHUNK

    def begin(self, context: DraftContext) -> None:
        if context.reference is None:
            raise DrafterError("oracle drafters need the greedy reference (DraftContext.reference)")
        self.reference = context.reference
        self.history = [*context.prompt_ids, context.first_token]
        self._line, self._start, self._chunk = (), len(self.history), self.CHUNK

    def truth(self, length: int) -> list[int]:
        """The next ``length`` greedy tokens after the output so far (fewer where the line ends at EOS)."""
        offset = len(self.history) - self._start  # tokens emitted since the line was fetched
        on_line = offset <= len(self._line) and tuple(self.history[self._start :]) == self._line[:offset]
        ends = bool(self._line) and self._line[-1] in self.eos
        if not on_line or (len(self._line) - offset < length and not ends):
            # Sampling leaves the greedy line almost every cycle: then fetch only what one tree needs,
            # and grow the fetch again while the output stays on the line (greedy decoding).
            self._chunk = length if not on_line else min(2 * self._chunk, self.CHUNK)
            self._line = self.reference(tuple(self.history), max(length, self._chunk))
            self._start, offset = len(self.history), 0
        return list(self._line[offset : offset + length])

    def advance(self, verdict: Verdict) -> None:
        self.history.extend(verdict.tokens)


def _wrong_tokens(vocab: int, avoid: set[int], count: int, gen: torch.Generator) -> list[int]:
    picks: list[int] = []
    while len(picks) < count:
        tok = int(torch.randint(3, vocab, (1,), generator=gen))  # skip specials: keep EOS where the truth puts it
        if tok not in avoid:
            avoid.add(tok)
            picks.append(tok)
    return picks


class OracleDrafter:
    def __init__(self, settings: DrafterSettings, vocab_size: int, eos: tuple[int, ...]):
        self.settings = settings
        self.vocab_size = vocab_size
        self._cursor = _ReferenceCursor(eos)
        self._gen = generator_for(settings.seed)

    def begin(self, context: DraftContext) -> None:
        self._cursor.begin(context)

    def propose(self, root: int) -> DraftTree:
        shape = self.settings.tree
        truth = self._cursor.truth(shape.levels)
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
        truth = self._cursor.truth(levels)
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
    return OracleDrafter(settings, target.vocab_size, target.eos_token_ids)


def build_noisy_oracle(target: Target, settings: DrafterSettings) -> NoisyOracleDrafter:
    return NoisyOracleDrafter(settings, target.vocab_size, target.eos_token_ids)
