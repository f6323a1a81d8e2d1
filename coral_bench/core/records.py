"""Per-cycle and per-sample measurement records: plain values, no torch (stats and reports read them)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields


@dataclass(frozen=True)
class CycleRecord:
    """One draft → score → verify → commit round (docs/methods.md §1)."""

    nodes: int  # tree size including the root
    depth: int  # deepest tree level
    forwards: int  # D, sequential drafter forwards
    accepted: int  # draft tokens accepted
    emitted: int  # tokens emitted after the cut at EOS / max_new_tokens (accepted + 1 unless cut)
    draft_s: float  # drafter time: forward over new slots + tree building
    score_s: float  # target forward over the tree
    verify_s: float
    commit_s: float  # target + drafter commit
    expected_accepted: float | None = None  # closed-form E[accepted] of the tree at T > 0 (docs/methods.md §4)
    head_union: tuple[int, ...] = ()  # |∪ selected router groups| per drafter forward (routed drafters only)


STOP_EOS = "eos"
STOP_LENGTH = "max_new_tokens"


@dataclass(frozen=True)
class SampleRecord:
    """One (method, question, turn): the resume key and everything stats need. One line of samples.jsonl."""

    method: str
    question_id: str
    turn: int  # 0-based
    category: str
    prompt_tokens: int
    output_ids: tuple[int, ...]
    output_text: str
    new_tokens: int
    wall_s: float  # prefill + decode, as EAGLE's scripts time a turn
    prefill_s: float | None  # target prefill and first token (None: not measurable, e.g. peers)
    cycles: int
    accepted: tuple[int, ...]  # accepted draft tokens per cycle
    stop_reason: str  # STOP_EOS or STOP_LENGTH
    expected_accepted: tuple[float, ...] = ()  # per cycle, at T > 0 only

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.method, self.question_id, self.turn)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "SampleRecord":
        names = {f.name for f in fields(cls)}
        missing = {f.name for f in fields(cls) if f.default is MISSING} - data.keys()
        if missing:
            raise ValueError(f"sample record lacks {sorted(missing)}")
        kw = {k: data[k] for k in names if k in data}
        for name in ("output_ids", "accepted", "expected_accepted"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)
