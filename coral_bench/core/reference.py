"""Greedy continuations for the oracle drafters, computed outside the timed path.

An oracle drafts the target's own greedy continuation of the current context. It is read from known
sequences (vanilla's output for the same prompt) when the context is on one of them, else computed
by an untimed greedy decode with transformers' ``generate`` on the target's model (which builds its
own cache and leaves the Target's untouched). In bf16, tree scoring and single-row steps may round
differently and flip a near-tie; the oracle then resynchronises here instead of drafting a stale line.
"""

from __future__ import annotations

import torch

from coral_bench.core.target import Target


class GreedyReference:
    """``reference(context, n)`` → up to ``n`` (or more, when known) greedy tokens after ``context``."""

    def __init__(self, target: Target):
        self._target = target
        self._known: list[tuple[int, ...]] = []

    def add(self, prompt: list[int] | tuple[int, ...], output: tuple[int, ...]) -> None:
        """Record a known greedy sequence: a prompt and the greedy tokens that followed it."""
        self._known.append((*prompt, *output))

    def __call__(self, context: tuple[int, ...], n: int) -> tuple[int, ...]:
        size = len(context)
        for seq in reversed(self._known):
            if len(seq) > size and seq[:size] == context:
                return seq[size:]
        tail = self._greedy(context, n)
        self._known.append((*context, *tail))
        return tail

    @torch.inference_mode()
    def _greedy(self, context: tuple[int, ...], n: int) -> tuple[int, ...]:
        target = self._target
        ids = torch.tensor([context], device=target.device)
        out = target.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                    temperature=None, top_p=None, top_k=None,
                                    eos_token_id=list(target.eos_token_ids), pad_token_id=target.eos_token_ids[0])
        tail = out[0, len(context):].tolist()
        eos = set(target.eos_token_ids)
        cut = next((i + 1 for i, t in enumerate(tail) if t in eos), len(tail))
        return tuple(tail[:cut])
