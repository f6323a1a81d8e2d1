"""The target's passes over training sequences: batched generation with features captured on the
way, teacher-forced feature forwards, and the loss masks of (multi-turn) answers, built from lengths.

Generation batches are LEFT-padded with an explicit attention mask; transformers' ``generate``
returns the post-norm last-layer features of every position it ran at no extra cost, and the one
position it never runs gets one extra cached step (``tests/test_data.py`` checks the result equals
a teacher-forced forward). Masks come from lengths, never from pad ids (EOS = pad in SmolLM2).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, StaticCache

from coral_bench.core.target import Target


# ---- sequences: masks from lengths -------------------------------------------------------------
class AssemblyError(ValueError):
    """An earlier answer could not be located in the re-rendered conversation."""


def conversation_mask(rounds: Seq[Seq[int]], response: Seq[int], eos_ids: Seq[int]) -> torch.Tensor:  # [L] bool
    """Loss mask of ``rounds[-1] + response``: the response, and each earlier answer inside the last
    prompt. ``rounds[j]`` is the prompt of round j (it ends with the generation prompt); answer j
    starts right after it and ends at the first EOS, included. Built from lengths, never from pad ids."""
    last = list(rounds[-1])
    mask = torch.zeros(len(last) + len(response), dtype=torch.bool)
    eos = set(eos_ids)
    for prompt in rounds[:-1]:
        start = len(prompt)
        if last[:start] != list(prompt):
            raise AssemblyError("a later round's rendering does not extend the earlier one")
        end = next((t for t in range(start, len(last)) if last[t] in eos), None)
        if end is None:
            raise AssemblyError("no end-of-turn token after an earlier answer")
        mask[start : end + 1] = True
    mask[len(last) :] = True
    return mask


def response_length(generated: torch.Tensor, eos_ids: Seq[int]) -> tuple[int, bool]:
    """(length up to and including the first EOS, or all of it; whether no EOS came: hit max)."""
    is_eos = torch.isin(generated, torch.tensor(list(eos_ids), device=generated.device))
    if bool(is_eos.any()):
        return int(is_eos.int().argmax()) + 1, False
    return int(generated.shape[0]), True


# ---- the target's passes -----------------------------------------------------------------------
@dataclass(frozen=True)
class Generation:
    """One generated sequence: prompt + response without padding, and its features."""

    ids: torch.Tensor  # [P + R] prompt + response, no padding
    prompt_len: int
    features: torch.Tensor | None  # [P + R, H]
    hit_max: bool


@torch.no_grad()
def generate_batch(target: Target, prompts: Seq[Seq[int]], max_new_tokens: int, temperature: float = 0.0,
                   features: bool = True) -> list[Generation]:
    """Generate a response for each prompt in one left-padded batch; optionally with the post-norm
    last-layer features of every position of each unpadded prompt + response."""
    model = target.model
    device = target.device
    eos = list(target.eos_token_ids)
    pad = eos[0]
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    # A fresh config: the target's own (repetition penalties, sampling defaults…) must not leak in.
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
    # disable_compile: on CUDA a static cache would make generate torch.compile the forward, and every
    # batch (its own size and width) would recompile.
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, use_cache=True,
                              return_dict_in_generate=True, output_hidden_states=features, disable_compile=True,
                              **sampling)
    # Our own preallocated cache: a dynamic one concatenates every layer's keys and values at every
    # step (at batch 64 × 1,000 positions that copies more memory than the step computes), and
    # generate's own static cache has no room for the one extra step below.
    cache = StaticCache(config=model.config, max_cache_len=width + max_new_tokens)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, cache=cache)
    sequences = out.sequences  # [B, width + n]
    steps = sequences.shape[1] - width
    feats = None
    if features:
        # hidden_states[s][-1]: the last layer after the final norm (docs/design.md §3) for the inputs of
        # step s: the whole padded prompt at s = 0, then the token sampled at step s − 1.
        feats = torch.cat([h[-1] for h in out.hidden_states], dim=1)  # [B, width + steps − 1, H]
    results = []
    ends = []
    for i in range(len(prompts)):
        length, hit = response_length(sequences[i, width:], eos)
        ends.append((length, hit))
    if features and any(length == steps for length, _ in ends):
        # Rows whose last token came from the last step: generate never ran that token. One more
        # cached step over the whole batch gives its feature (positions continue as generate's:
        # cumsum of the attention mask − 1).
        full = torch.cat([mask, torch.ones(len(prompts), steps, dtype=mask.dtype, device=device)], dim=1)
        positions = (mask.sum(dim=1, keepdim=True) + steps - 1).long()
        last = model.model(input_ids=sequences[:, -1:], attention_mask=full, position_ids=positions, cache=cache,
                           use_cache=True).last_hidden_state  # [B, 1, H]
        feats = torch.cat([feats, last], dim=1)
    for i, (length, hit) in enumerate(ends):
        lo, hi = width - lengths[i], width + length
        # clone: a view would keep the whole padded batch alive until its shard is written
        results.append(Generation(sequences[i, lo:hi].cpu().clone(), lengths[i],
                                   None if feats is None else feats[i, lo:hi].cpu().clone(), hit))
    del out, feats
    return results


@torch.no_grad()
def teacher_forced(target: Target, sequences: Seq[torch.Tensor]) -> list[torch.Tensor]:
    """Post-norm last-layer features [L, H] of each sequence, from one right-padded causal forward.
    Right padding needs no mask: with causal attention no real token ever sees a pad."""
    lengths = [int(s.shape[0]) for s in sequences]
    ids = torch.full((len(sequences), max(lengths)), target.eos_token_ids[0], dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : lengths[i]] = s
    hidden = target.model.model(input_ids=ids.to(target.device), use_cache=False).last_hidden_state
    return [hidden[i, :n].cpu().clone() for i, n in enumerate(lengths)]
