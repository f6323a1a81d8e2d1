"""The one speculative decoding loop: draft → score → verify → commit, for every drafter.

Vanilla decoding is the same loop with one-node trees, which the Target runs through its plain
causal path. Stopping (docs/methods.md §1): the emitted chunk is cut after the first EOS (kept) or at
exactly ``max_new_tokens``; both sides count the same emitted tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from coral_bench.core.clock import Clock
from coral_bench.core.drafter import DraftContext, Drafter
from coral_bench.core.records import STOP_EOS, STOP_LENGTH, CycleRecord
from coral_bench.core.sampling import SamplingConfig, sample, warp
from coral_bench.core.target import Target, TargetError
from coral_bench.core.verify import expected_accepted, verify


@dataclass(frozen=True)
class Generation:
    """One generated turn."""

    ids: tuple[int, ...]  # new tokens, the prefill's token first
    stop_reason: str
    wall_s: float  # prefill + decode
    prefill_s: float | None  # target prefill and the first token (None: not measurable, peers)
    cycles: tuple[CycleRecord, ...]


def first_token(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator) -> int:  # [1, V]
    if sampling.is_greedy:
        return int(logits[0].argmax())
    return sample(warp(logits[0], sampling), generator)


def generate(
    target: Target,
    drafter: Drafter,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    generator: torch.Generator,
    clock: Clock,
    reserve: int = 1,
    reference: Callable[[tuple[int, ...], int], tuple[int, ...]] | None = None,
) -> Generation:
    """Generate one turn. ``reserve`` is the most tree nodes a cycle may add (context check).

    At T > 0 each cycle also records the closed-form E[accepted] of its tree (docs/methods.md §4). That and
    ``reference`` (the oracle drafters' untimed greedy continuation) are excluded from every timing.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    need = len(prompt_ids) + max_new_tokens + reserve
    if need > target.max_context:
        raise TargetError(
            f"prompt of {len(prompt_ids)} tokens + {max_new_tokens} new + {reserve} tree nodes "
            f"exceeds the target's context of {target.max_context}"
        )
    eos = set(target.eos_token_ids)
    start = clock.now()
    prefill = target.prefill(torch.tensor(prompt_ids, dtype=torch.long))
    out = [first_token(prefill.logits, sampling, generator)]
    prefill_s = clock.now() - start
    cycles: list[CycleRecord] = []
    if out[0] in eos or max_new_tokens == 1:
        stop = STOP_EOS if out[0] in eos else STOP_LENGTH
        return Generation(tuple(out), stop, clock.now() - start, prefill_s, ())
    untimed = 0.0  # seconds spent on measurement only: excluded from wall and cycle times

    def untimed_reference(context: tuple[int, ...], n: int) -> tuple[int, ...]:
        nonlocal untimed
        t = clock.now()
        tail = reference(context, n)
        untimed += clock.now() - t
        return tail

    drafter.begin(DraftContext(tuple(prompt_ids), out[0], prefill, untimed_reference if reference else None))
    root = out[0]
    while True:
        untimed_before = untimed
        t0 = clock.now()
        tree = drafter.propose(root)
        t1 = clock.now()
        draft_s = t1 - t0 - (untimed - untimed_before)
        scored = target.score(tree)
        t2 = clock.now()
        verdict = verify(tree, scored.logits, sampling, generator)
        t3 = clock.now()
        chunk, stop = _cut(verdict.tokens, eos, max_new_tokens - len(out))
        out.extend(chunk)
        if stop is None:
            target.commit(verdict.path)
            drafter.commit(verdict, scored)
            root = verdict.bonus
        t4 = clock.now()
        elapsed = t4 - start - untimed
        expected = None
        if not sampling.is_greedy:
            expected = expected_accepted(tree, scored.logits, sampling)
            untimed += clock.now() - t4
        cycles.append(CycleRecord(tree.size, tree.depth, tree.forwards, verdict.accepted, len(chunk),
                                  draft_s, t2 - t1, t3 - t2, t4 - t3, expected, tree.head_union))
        if stop is not None:
            return Generation(tuple(out), stop, elapsed, prefill_s, tuple(cycles))


def _cut(tokens: tuple[int, ...], eos: set[int], room: int) -> tuple[tuple[int, ...], str | None]:
    """The emitted chunk after the cut, and why generation stops (None: it goes on)."""
    for i, tok in enumerate(tokens[:room]):
        if tok in eos:
            return tokens[: i + 1], STOP_EOS
    if len(tokens) >= room:
        return tokens[:room], STOP_LENGTH
    return tokens, None
