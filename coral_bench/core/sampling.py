"""Sampling settings, logits warping (temperature → top-k → top-p) and seeded sampling.

The warper order and semantics are those of HF ``generate`` (``TemperatureLogitsWarper``,
``TopKLogitsWarper``, ``TopPLogitsWarper``, applied in that order), so vanilla sampling and
speculative verification draw from the same distribution p (docs/methods.md §4). The order is recorded
in every result through :data:`WARPER_ORDER`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WARPER_ORDER = ("temperature", "top_k", "top_p")  # as HF generate applies them; recorded in results


@dataclass(frozen=True)
class SamplingConfig:
    """How the target's next-token distribution is sampled.

    ``temperature == 0`` means greedy decoding. ``top_k`` is the *sampling* top-k (CLI
    ``--sample-top-k``; 0 disables it), not the tree's ``top_k``. ``top_p == 1`` disables nucleus
    filtering. ``seed`` seeds the generator of a run.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # sampling top-k (--sample-top-k); 0 = off
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:  # also rejects NaN
            raise ValueError(f"temperature must be >= 0 (0 = greedy), not {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), not {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"sample top-k must be an integer >= 0 (0 = off), not {self.top_k!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, not {self.seed!r}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator seeded with ``seed``."""
        return torch.Generator(device=device).manual_seed(self.seed)


def warp(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:  # [..., V] -> [..., V]
    """The target distribution p: softmax after temperature → top-k → top-p (HF semantics).

    Computed in fp32 (float64 input stays float64). At temperature 0 it is the one-hot of the
    argmax (the limit T → 0; ties go to the first index, as ``torch.argmax``).
    """
    x = logits if logits.dtype == torch.float64 else logits.float()
    vocab = x.shape[-1]
    if cfg.is_greedy:
        return torch.zeros_like(x).scatter_(-1, x.argmax(dim=-1, keepdim=True), 1.0)
    if cfg.temperature != 1.0:
        x = x / cfg.temperature
    if 0 < cfg.top_k < vocab:
        # HF TopKLogitsWarper: drop scores strictly below the k-th largest (ties with it are kept).
        kth = torch.topk(x, cfg.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if cfg.top_p < 1.0:
        # HF TopPLogitsWarper: in ascending order, drop tokens whose cumulative probability is
        # <= 1 - top_p, always keeping the most probable one; what stays is the smallest set
        # whose mass is >= top_p.
        sorted_x, order = torch.sort(x, dim=-1, descending=False)
        cum = sorted_x.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1.0 - cfg.top_p)
        drop_sorted[..., -1] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x.softmax(dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:  # probs [V]
    """One token id drawn from ``probs`` (need not be normalised) with ``generator``."""
    return int(torch.multinomial(probs, 1, generator=generator).item())
