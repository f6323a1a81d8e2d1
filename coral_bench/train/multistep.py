"""The masked multi-step training forward (HASS "harmonized context alignment", docs/methods.md §5).

With G^{(j)}_t the drafter's step-j output at slot t (a prediction of f_{t+1}):

- step 1 is EAGLE: slot t has input (embed(x_{t+1}), f_t) and attends causally over step-1 keys;
- step j > 1: slot t has input (embed(x_{t+1}), G^{(j−1)}_{t−1}) and attends to the step-1 (real
  feature) keys at slots ≤ t − (j − 1) and, for each step i = 2…j, to exactly one key built from the
  step-i inputs, at slot t − (j − i). Every key carries the RoPE position of its slot (its token
  position), never its index in the concatenation.

This is what the inference drafter computes at tree depth j (real cache up to slot t − (j − 1), then
j − 1 self-fed forwards); ``tests/test_train.py`` checks it against ``EagleDrafter`` itself in fp64.

Efficient form: step j runs T queries against the T real-feature keys (a shifted causal block) plus one
T-key block per earlier step of which each query sees a single diagonal, i.e. [T, j·T] scores, never a
[jT, jT] attention. The keys/values of every step are computed once (as that step's new slots) and
reused by the later steps through ``EagleModel``'s explicit ``past`` and boolean mask.

Slots t < j − 1 have no self-predicted history. As HASS does, they keep the real feature: slot 0's
input is f_0 at every step and keys at negative slots do not exist, so G^{(j)}_t = G^{(t+1)}_t there
(``history="keep-real"``, the default). ``history="exclude"`` computes the same forward but drops those
slots from step j's loss. Either way it is recorded in the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from ..drafters.eagle_model import EagleModel

HISTORY = ("keep-real", "exclude")


def step_mask(slots: int, step: int, device: torch.device | str = "cpu") -> torch.Tensor:  # [1, 1, T, step·T] bool
    """Which keys step ``step`` may attend to at each slot.

    Key columns: step-1 keys at slots 0…T−1, then step-2 keys, …, then the step's own new keys (the
    column order of ``EagleModel``: ``past`` first, new slots last). Row t sees step-1 keys at slots
    ≤ t − (step − 1) and the step-i key at slot t − (step − i) for i = 2…step.
    """
    t = torch.arange(slots, device=device)[:, None]
    s = torch.arange(slots, device=device)[None, :]
    blocks = [s <= t - (step - 1)]
    blocks += [s == t - (step - i) for i in range(2, step + 1)]
    return torch.cat(blocks, dim=1)[None, None]


def step_valid(valid: torch.Tensor, steps: int, history: str) -> tuple[torch.Tensor, ...]:
    """Per-step loss masks [B, T] bool from the step-1 mask: identical with ``keep-real``; with
    ``exclude`` step j drops slots t < j − 1 (no self-predicted history)."""
    if history not in HISTORY:
        raise ValueError(f"history must be one of {HISTORY}, not {history!r}")
    if history == "keep-real":
        return (valid,) * steps
    t = torch.arange(valid.shape[1], device=valid.device)
    return tuple(valid & (t >= j - 1) for j in range(1, steps + 1))


class MultiStepDrafter(nn.Module):
    """An ``EagleModel`` unrolled for ``steps`` training steps in one module call (one DDP forward).

    ``detach_inputs`` (HASS, default): the features fed to step j > 1 are detached, so each step's
    gradient reaches the weights only through that step's own forward and the keys/values it reads.
    """

    def __init__(self, model: EagleModel, steps: int, detach_inputs: bool = True):
        super().__init__()
        if steps < 1:
            raise ValueError("steps must be >= 1")
        self.model = model
        self.steps = steps
        self.detach_inputs = detach_inputs

    def forward(
        self,
        emb: torch.Tensor,  # [B, T, H] embed(x_{t+1})
        feat: torch.Tensor,  # [B, T, H] f_t (step-1 inputs, noise included)
        positions: torch.Tensor,  # [B, T] int64, slot t at position t
    ) -> tuple[torch.Tensor, ...]:  # steps × [B, T, H]: G^{(1)}, …, G^{(n)}
        out = self.model(emb, feat, positions)  # step 1: causal over real features
        outputs = [out.hidden]
        kv = out.kv  # step-1 keys, then step-2 keys, …: the columns of step_mask
        slots = emb.shape[1]
        for j in range(2, self.steps + 1):
            prev = outputs[-1].detach() if self.detach_inputs else outputs[-1]
            # slot t gets G^{(j−1)}_{t−1}; slot 0 has none and keeps its real feature (HASS)
            fed = torch.cat((feat[:, :1], prev[:, :-1].to(feat.dtype)), dim=1)
            out = self.model(emb, fed, positions, past=kv, attn_mask=step_mask(slots, j, emb.device))
            outputs.append(out.hidden)
            if j < self.steps:
                kv = kv.cat(out.kv)
        return tuple(outputs)
