"""Peers: other implementations timed beside coral-bench's methods on the same target object.

``hf-vanilla`` is transformers' own ``generate`` (greedy or sampling) with the same prompts, stopping
rule and clock: if coral-bench's vanilla were slower than it, every speedup would be inflated.
"""

from __future__ import annotations

import torch

from .clock import Clock
from .decode import Generation
from .records import STOP_EOS, STOP_LENGTH
from .sampling import SamplingConfig
from .target import Target

PEERS = {"hf-vanilla": "transformers' generate() on the same model object (always run)"}


class PeerError(ValueError):
    """An unknown or failing peer."""


def hf_generate(target: Target, prompt_ids: list[int], max_new_tokens: int, sampling: SamplingConfig,
                seed: int, clock: Clock) -> Generation:
    """transformers' ``generate`` on the target's model; acceptance counts are not available."""
    model = target.model
    ids = torch.tensor([prompt_ids], device=target.device)
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=list(target.eos_token_ids),
                  pad_token_id=target.eos_token_ids[0], attention_mask=torch.ones_like(ids))
    if sampling.is_greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        torch.manual_seed(seed)  # generate samples from the global generator
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                      top_k=sampling.top_k or None)
    start = clock.now()
    with torch.inference_mode():
        out = model.generate(ids, **kwargs)
    wall = clock.now() - start
    new = out[0, len(prompt_ids):].tolist()
    eos = set(target.eos_token_ids)
    cut = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
    new = new[:cut]
    stop = STOP_EOS if new and new[-1] in eos else STOP_LENGTH
    return Generation(tuple(new), stop, wall, None, ())
