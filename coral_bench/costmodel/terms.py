"""Profile-pass measurements for drafters beyond the EAGLE-style forward (``draft_costs``, docs/methods.md §6–7).

- ``early-exit:N``: the target's per-layer, embedding, norm and LM-head latencies of a one-row forward
  at each profiled context (``forwards.target_regions``), and the glue of the early-exit step measured
  on ``Target.early_exit_chain`` itself (its time outside those modules).
- routed / subset draft heads: the head's matmul and finish + log-sum-exp + top-k over U rows of the
  LM head, for U on a grid of row counts and the forward widths that occur, and the router's forward.
- the no-op loop's stand-ins for oracles (a constant greedy line) and early exit (precomputed drafts).

Everything is timed here, never fitted on the run the model predicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from coral_bench.core.clock import Clock
from coral_bench.costmodel.curves import Curve, Grid
from coral_bench.costmodel.draft_costs import EarlyExitCosts, HeadRowCosts
from coral_bench.drafters.draft_heads import RoutedHead, SubsetHead
from coral_bench.costmodel.forwards import (RegionProfile, RegionTimer, median_repeat, median_time, random_ids, target_modules,
                               target_regions)
from coral_bench.core.target import EarlyExitDraft, Target

HEAD_ROW_POINTS = 5  # row counts on the head-rows curve of a routed head (1 … N groups)


# ---- early exit -------------------------------------------------------------------------------


@torch.inference_mode()
def early_exit_glue(target: Target, exit_layers: int, steps: int, context: int, clock: Clock, repeats: int,
                    gen: torch.Generator) -> RegionProfile:
    """``Target.early_exit_chain`` of ``steps`` one-token forwards after ``context`` tokens, by region: its
    ``other`` is the glue outside the embedding, layers, norm and LM head (RoPE table, casts, argmax, crop)."""
    target.prefill(random_ids(context, target.vocab_size, gen))
    root = int(random_ids(1, target.vocab_size, gen)[0])
    runs = []
    with RegionTimer(target_modules(target), clock) as timer:
        for _ in range(max(1, repeats) + 1):
            timer.take()
            start = clock.now()
            target.early_exit_chain(root, exit_layers, steps)
            runs.append((clock.now() - start, timer.take()))
    return median_repeat("target", "early-exit", steps, context, runs[1:])


def early_exit_costs(target: Target, exit_layers: int, steps: int, contexts: Sequence[int], clock: Clock,
                     repeats: int, gen: torch.Generator) -> tuple[EarlyExitCosts, tuple[RegionProfile, ...]]:
    """The terms of ``EarlyExitCosts`` at every context, and the region tables they come from."""
    limit = target.max_context - steps - 1
    contexts = sorted({min(c, limit) for c in contexts})
    one_row = [target_regions(target, 1, c, clock, repeats, gen) for c in contexts]
    glue = [early_exit_glue(target, exit_layers, steps, c, clock, repeats, gen) for c in contexts]

    def over_context(profiles: Sequence[RegionProfile], value) -> Curve:
        return Curve.from_points((p.context, value(p)) for p in profiles)

    layers = tuple(over_context(one_row, lambda p, i=i: p.region(f"layer.{i}")) for i in range(target.num_layers))
    costs = EarlyExitCosts(layers, over_context(one_row, lambda p: p.region("embedding") + p.region("norm")),
                           over_context(one_row, lambda p: p.region("lm_head")),
                           over_context(glue, lambda p: p.region("other") / steps), exit_layers, steps)
    return costs, tuple(one_row + glue)


class EarlyExitView:
    """Stands in for ``Target`` inside ``EarlyExitDrafter`` in the no-op loop: precomputed drafts over the real
    vocabulary (so the dynamic tree's log-softmax and rerank cost what they cost), no forward."""

    def __init__(self, vocab: int, steps: int, eos: Sequence[int], device: torch.device, gen: torch.Generator):
        logits = torch.randn(steps, vocab, generator=gen)
        logits[:, [e for e in eos if e < vocab]] = float("-inf")  # never draft an EOS: the loop must run on
        self._draft = EarlyExitDraft(tuple(logits.argmax(-1).tolist()), logits.to(device))

    def early_exit_chain(self, root: int, layers: int, length: int) -> EarlyExitDraft:
        return EarlyExitDraft(self._draft.tokens[:length], self._draft.logits[:length])


def constant_reference(token: int):
    """The no-op loop's greedy line for oracles: one token repeated. The no-op target accepts the planned
    L_c whatever the tokens, so only the oracle's own lookup and tree building are timed (as in a run,
    fetching the line is untimed)."""
    def reference(context: tuple[int, ...], n: int) -> tuple[int, ...]:
        return (token,) * n

    return reference


# ---- routed and subset heads ------------------------------------------------------------------


@dataclass(frozen=True)
class _HeadRows:
    """What a cheap draft head computes from: rows in head order, finish, and how U varies."""

    weight: torch.Tensor  # [V', H] head rows, group by group (routed) or the subset's rows
    bias: torch.Tensor | None  # [V'] or None
    head: RoutedHead | SubsetHead


def _rows_of(head: RoutedHead | SubsetHead) -> _HeadRows:
    if isinstance(head, RoutedHead):
        return _HeadRows(head.layout.weight, head.layout.bias, head)
    return _HeadRows(head.weight, head.bias, head)


def _row_counts(head: RoutedHead | SubsetHead) -> tuple[int, ...]:
    """U at which to measure: a subset's size; for a routed head 1 … N groups' worth of rows (evenly spaced)."""
    if isinstance(head, SubsetHead):
        return (int(head.tokens.numel()),)
    g = head.grouping
    groups = {1 + round(i * (g.groups - 1) / (HEAD_ROW_POINTS - 1)) for i in range(HEAD_ROW_POINTS)}
    return tuple(sorted({round(c * g.vocab_size / g.groups) for c in groups}))


@torch.inference_mode()
def head_row_costs(head: RoutedHead | SubsetHead, widths: Sequence[int], top_k: int, clock: Clock, repeats: int,
                   gen: torch.Generator) -> HeadRowCosts:
    """T_matmul(U, w), T_sm(U, w) and T_router(w) of a routed or subset head, at the widths w that occur."""
    rows = _rows_of(head)
    w_dtype, device = rows.weight.dtype, rows.weight.device
    hidden = rows.weight.shape[1]
    widths = sorted(set(widths))
    matmul, sm, router = [], [], []

    def time(fn) -> float:
        def once() -> float:
            start = clock.now()
            fn()
            return clock.now() - start
        return median_time(once, repeats)

    for w in widths:
        x = torch.randn(w, hidden, generator=gen).to(device=device, dtype=w_dtype)
        for u in _row_counts(head):
            weight, bias = rows.weight[:u], None if rows.bias is None else rows.bias[:u]
            matmul.append((u, w, time(lambda: F.linear(x, weight, bias))))
            logits = F.linear(x, weight, bias)
            k = min(top_k, u)

            def finish_top(logits=logits, k=k) -> None:
                out = head.finish(logits)
                vals, _ = out.topk(k, dim=-1)
                _ = vals - out.logsumexp(-1, keepdim=True)

            sm.append((u, w, time(finish_top)))
        if isinstance(head, RoutedHead):
            router.append((w, time(lambda: head.select(x))))
    if isinstance(head, RoutedHead):
        g = head.grouping
        return HeadRowCosts("routed", g.vocab_size / g.groups, g.groups, head.k, Curve.from_points(router),
                            Grid.from_points(matmul), Grid.from_points(sm))
    return HeadRowCosts("frequency-subset", float(head.tokens.numel()), 1, 1, None, Grid.from_points(matmul),
                        Grid.from_points(sm))
