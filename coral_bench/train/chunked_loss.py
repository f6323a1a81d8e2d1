"""Vocabulary losses computed a block of rows at a time, never holding [N, V] logits.

The soft cross-entropy and HASS's top-K distillation need, per slot, the target's distribution and
the drafter's log-softmax over the whole vocabulary: for N = 8,192 slots of a 128k-token target that
is 4 GiB per tensor in float32, several times over with gradients. Here each block of ``rows`` slots
runs under activation checkpointing: its logits exist only while the block is computed, and again
while its gradient is (recomputed in the backward pass), so the memory is rows × V instead of N × V.
The values are those of the unchunked losses (tests/test_losses.py proves it).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint


def per_slot_vocab_loss(pred: torch.Tensor, target: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                        target_logp: Callable[[torch.Tensor], torch.Tensor], rows: int,
                        top_k: int | None = None) -> torch.Tensor:  # [N]
    """−Σ_x p(x) log p̂(x) per slot (over the target's top ``top_k`` tokens only when given).

    ``pred`` [N, H] the drafter's features (with gradient); ``target`` [N, H] f_{t+1}; ``head`` the
    frozen LM head; ``target_logp`` the exact target log-softmax of features (no gradient, outside
    autocast: ``Frozen.target_logp``); ``rows`` slots per block.
    """
    if rows < 1:
        raise ValueError("rows per block must be >= 1")
    blocks = [checkpoint(_block, pred[a : a + rows], target[a : a + rows], head, target_logp, top_k,
                         use_reentrant=False)
              for a in range(0, pred.shape[0], rows)]
    return torch.cat(blocks) if blocks else pred.new_zeros(0)


def _block(pred, target, head, target_logp, top_k):
    t_logp = target_logp(target)
    logits = head(pred)
    logp = torch.log_softmax(logits if logits.dtype in (torch.float32, torch.float64) else logits.float(), -1)
    p = t_logp.exp()
    if top_k is None:
        return -(p * logp).sum(-1)
    idx = t_logp.topk(min(top_k, t_logp.shape[-1]), dim=-1).indices
    return -(p.gather(-1, idx) * logp.gather(-1, idx)).sum(-1)
