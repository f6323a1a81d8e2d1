"""Greedy (T = 0) output equality with vanilla, tie-aware (docs/methods.md §4).

Pure Python (never runs a model): the caller measures vanilla's top-2 logit margin where outputs
first differ, and this module decides whether each difference is a numerical tie or a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

from coral_bench.core.records import SampleRecord
from coral_bench.metrics.stats import paired_samples


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
class Divergence:
    """A paired sample whose output differs from vanilla's, from ``position`` on.

    ``margin`` is vanilla's top-2 logit margin at that position (None: not known); ``bound`` the tie
    bound it was compared with.
    """

    question_id: str
    turn: int
    position: int
    margin: float | None
    bound: float | None = None

    def to_json(self) -> dict:
        return {"question_id": self.question_id, "turn": self.turn, "position": self.position, "margin": self.margin,
                "bound": self.bound}


@dataclass(frozen=True)
class Equality:
    """Greedy (T = 0) output equality with vanilla, tie-aware (docs/methods.md §4).

    A differing sample is a numerical **tie** when vanilla's top-2 margin at the first divergent
    position is known and below ``tie_threshold``; it **follows a tie** when its prompt already
    differed from vanilla's because an earlier turn of the same question diverged at a tie (a later
    turn answers the method's own earlier answer); otherwise it is a **mismatch** (a bug, or an
    unknown margin that needs looking at).
    """

    pairs: int
    identical: int
    tie_threshold: float
    equal_to_vanilla: float  # identical / pairs
    equal_to_vanilla_except_ties: float  # (identical + ties + after_ties) / pairs
    ties: tuple[Divergence, ...]
    mismatches: tuple[Divergence, ...]
    after_ties: tuple[Divergence, ...] = ()  # later turns whose context differed after a tie

    def to_json(self) -> dict:
        return {
            "pairs": self.pairs,
            "identical": self.identical,
            "tie_threshold": self.tie_threshold,
            "equal_to_vanilla": self.equal_to_vanilla,
            "equal_to_vanilla_except_ties": self.equal_to_vanilla_except_ties,
            "ties": [t.to_json() for t in self.ties],
            "after_ties": [t.to_json() for t in self.after_ties],
            "mismatches": [m.to_json() for m in self.mismatches],
        }


def equality(
    spec: Sequence[SampleRecord],
    vanilla: Sequence[SampleRecord],
    tie_margins: Mapping[tuple[str, int], float | None],
    tie_threshold: float,
    tie_bounds: Mapping[tuple[str, int], float] | None = None,
    different_context: Collection[tuple[str, int]] = (),
) -> Equality:
    """Compare outputs of samples paired by (question_id, turn) (docs/methods.md §4).

    ``tie_margins[(question_id, turn)]`` is vanilla's top-2 logit margin at the first divergent
    position, measured by the caller (this module never runs a model); a missing key or None means
    unknown, which counts as a mismatch: only a known small margin excuses a difference.
    ``tie_bounds`` optionally gives a per-sample bound (e.g. a few ULPs of a bf16 logit's magnitude)
    that replaces ``tie_threshold`` where it is larger. ``different_context`` lists the
    (question_id, turn) whose prompt differed from vanilla's (an earlier turn diverged): such a
    sample follows a tie when every earlier differing turn of its question is a tie.
    """
    pairs, _, _ = paired_samples(spec, vanilla)
    if not pairs:
        raise ValueError("equality: no (question_id, turn) present on both sides")
    ties: list[Divergence] = []
    after_ties: list[Divergence] = []
    mismatches: list[Divergence] = []
    tied_questions: dict[str, bool] = {}  # question → all its differing turns so far were ties
    for s, v in sorted(pairs, key=lambda p: (p[0].question_id, p[0].turn)):
        pos = first_divergence(s.output_ids, v.output_ids)
        if pos is None:
            continue
        key = (s.question_id, s.turn)
        margin = tie_margins.get(key)
        bound = max(tie_threshold, (tie_bounds or {}).get(key, 0.0))
        d = Divergence(s.question_id, s.turn, pos, None if margin is None else float(margin), float(bound))
        if key in different_context and tied_questions.get(s.question_id, False):
            after_ties.append(d)
        elif margin is not None and margin <= bound:  # inclusive: each logit off by half the bound flips it
            ties.append(d)
            tied_questions.setdefault(s.question_id, True)
        else:
            mismatches.append(d)
            tied_questions[s.question_id] = False
    identical = len(pairs) - len(ties) - len(after_ties) - len(mismatches)
    return Equality(
        pairs=len(pairs),
        identical=identical,
        tie_threshold=float(tie_threshold),
        equal_to_vanilla=identical / len(pairs),
        equal_to_vanilla_except_ties=(identical + len(ties) + len(after_ties)) / len(pairs),
        ties=tuple(ties),
        mismatches=tuple(mismatches),
        after_ties=tuple(after_ties),
    )
