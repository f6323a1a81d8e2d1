"""Greedy (T = 0) output equality with vanilla, judged against a measured noise bound (docs/methods.md §4).

Pure Python (never runs a model): the caller (``run/judge.py``) pairs each (question, turn) of a
method with vanilla's greedy output *for the same prompt* — the run's own vanilla sample on turn 0,
vanilla re-run on the method's own earlier answers on later turns whose history differs — and
measures vanilla's top-2 margin where they first differ; this module classifies each pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

IDENTICAL, NUMERICAL, DIVERGENT = "identical", "numerical", "divergent"
SAME_PROMPT, OWN_HISTORY = "vanilla's prompt", "own history"  # what the method's output was compared with


def first_divergence(a_ids: Sequence[int], b_ids: Sequence[int]) -> int | None:
    """Index of the first position where the two outputs differ; None when identical.

    If one output is a strict prefix of the other, the divergence is at the shorter one's length
    (one side stopped where the other went on).
    """
    for i, (x, y) in enumerate(zip(a_ids, b_ids)):
        if x != y:
            return i
    if len(a_ids) != len(b_ids):
        return min(len(a_ids), len(b_ids))
    return None


@dataclass(frozen=True)
class Comparison:
    """One (question, turn) of a method against vanilla greedy decoding of the same prompt.

    ``context`` says which vanilla output: :data:`SAME_PROMPT` (the run's vanilla sample: the prompts
    are equal) or :data:`OWN_HISTORY` (vanilla re-run on the method's own earlier answers, because an
    earlier turn diverged). ``position`` is the first divergence (None: identical); ``margin`` vanilla's
    top-2 logit margin there (None: not measured); ``bound`` the noise bound it is judged by.
    """

    question_id: str
    turn: int
    context: str
    position: int | None
    margin: float | None
    bound: float | None

    @property
    def verdict(self) -> str:
        if self.position is None:
            return IDENTICAL
        if self.margin is not None and self.bound is not None and self.margin <= self.bound:
            return NUMERICAL  # inclusive: the bound is a measured |Δ margin|, a flip needs Δ ≥ margin
        return DIVERGENT

    def to_json(self) -> dict:
        return {"question_id": self.question_id, "turn": self.turn, "context": self.context,
                "position": self.position, "margin": self.margin, "bound": self.bound, "verdict": self.verdict}


@dataclass(frozen=True)
class Equality:
    """Every (question, turn) classified identical / numerical / divergent (docs/methods.md §4).

    ``equal_to_vanilla`` is the plain rate of outputs identical to the run's vanilla samples (later
    turns on a differing history count as different there); the three counts compare each output
    with vanilla on its own prompt. ``noise_bound`` is how the bound was measured (``NoiseBound.to_json``).
    """

    pairs: int
    identical_to_run: int
    comparisons: tuple[Comparison, ...]
    noise_bound: Mapping[str, Any] | None

    def count(self, verdict: str) -> int:
        return sum(c.verdict == verdict for c in self.comparisons)

    def to_json(self) -> dict:
        return {
            "pairs": self.pairs,
            "equal_to_vanilla": self.identical_to_run / self.pairs,
            "equality": {
                IDENTICAL: self.count(IDENTICAL), NUMERICAL: self.count(NUMERICAL), DIVERGENT: self.count(DIVERGENT),
                "own_history": sum(c.context == OWN_HISTORY for c in self.comparisons),
                "noise_bound": None if self.noise_bound is None else dict(self.noise_bound),
                "differing": [c.to_json() for c in self.comparisons if c.verdict != IDENTICAL],
            },
        }


def classify(comparisons: Sequence[Comparison], identical_to_run: int,
             noise_bound: Mapping[str, Any] | None) -> Equality:
    """The :class:`Equality` of a method's comparisons, sorted by (question, turn)."""
    if not comparisons:
        raise ValueError("equality: no (question_id, turn) present on both sides")
    ordered = tuple(sorted(comparisons, key=lambda c: (c.question_id, c.turn)))
    return Equality(len(ordered), identical_to_run, ordered, noise_bound)
