"""Training losses (docs/methods.md §5): one signature, one registry.

Every loss is ``fn(inputs: LossInputs, settings: LossSettings) -> tuple[LossPart, ...]``. A part is a
*sum* over this process's slots and the *count* it is normalised by; :func:`combine` all-reduces the
counts (and, for logging, the sums) so that each part is divided by its **global** count: a
2-process run equals a 1-process run with the same global batch.

Terms (per unroll step j, weighted ``step_decay**(j−1)``; equal weights by default):

- ``regression``: SmoothL1(G^{(j)}_t, f_{t+1}) averaged over the hidden dimension (EAGLE's code), weight 1.0;
- ``soft_ce``: −Σ_x p(x)·log p̂(x) with p = softmax(lm_head(f_{t+1})) recomputed from the cached
  feature and p̂ = softmax(lm_head(G^{(j)}_t)), weight 0.1;
- ``topk``: HASS's top-K distillation −Σ_{x∈topK(p)} p(x)·log p̂(x), K = ``distill_k``;
- ``csra``: CORAL's cross-step InfoNCE over L2-normalised step outputs, per ordered step pair (a, b),
  a ≠ b, ``cross_entropy(cos(F_a, F_b)/τ_c, arange)`` with the positive in the denominator,
  averaged over pairs, weight λ. Candidates: the same sequence (default) or the whole global batch
  (all-gather with gradient). ``csra_anchor="step1-stopgrad"`` uses only pairs (1, b) with F_1 detached.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

CSRA_NEGATIVES = ("same-sequence", "in-batch")
CSRA_ANCHORS = ("symmetric", "step1-stopgrad")


@dataclass(frozen=True)
class LossSettings:
    """Weights and options of every term (recorded in checkpoints)."""

    regression_weight: float = 1.0
    ce_weight: float = 0.1
    distill_k: int = 10
    distill_weight: float = 0.0
    csra_weight: float = 0.0  # λ
    csra_temperature: float = 0.07  # τ_c
    csra_negatives: str = "same-sequence"
    csra_anchor: str = "symmetric"
    step_decay: float = 1.0  # step j weighs step_decay**(j−1) (EAGLE-3: 0.8)
    smooth_l1_beta: float = 1.0

    def __post_init__(self) -> None:
        if self.csra_negatives not in CSRA_NEGATIVES:
            raise ValueError(f"csra_negatives must be one of {CSRA_NEGATIVES}, not {self.csra_negatives!r}")
        if self.csra_anchor not in CSRA_ANCHORS:
            raise ValueError(f"csra_anchor must be one of {CSRA_ANCHORS}, not {self.csra_anchor!r}")
        if self.distill_k < 1:
            raise ValueError("distill_k must be >= 1")
        if self.csra_temperature <= 0:
            raise ValueError("csra_temperature must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)


class Collective(Protocol):
    """What losses need from the process group: sums of counts, and rows gathered with gradient."""

    world_size: int

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """All-reduce sum (no gradient)."""

    def gather_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every process's rows [N_total, ...] (gradient flows back to their owners) and where this
        process's rows start."""


@dataclass(frozen=True)
class SingleProcess:
    world_size: int = 1
    rank: int = 0

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return x, 0


class _GatherRows(torch.autograd.Function):
    """all-gather of a variable number of rows; backward sums every process's gradient for our rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        import torch.distributed as dist

        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.start, ctx.rows = sum(sizes[:rank]), x.shape[0]
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every process's loss depends on our rows
        return grad[ctx.start : ctx.start + ctx.rows], None, None


@dataclass(frozen=True)
class TorchDistributed:
    """torch.distributed's default process group (the one Accelerate initialised for DDP)."""

    world_size: int
    rank: int

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        y = x.detach().clone()
        dist.all_reduce(y)
        return y

    def gather_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        import torch.distributed as dist

        found = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(self.world_size)]
        dist.all_gather(found, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
        sizes = tuple(int(n) for n in found)
        if not any(sizes):  # nothing anywhere (every process sees the same sizes, so all skip)
            return x, 0
        return _GatherRows.apply(x, sizes, self.rank), sum(sizes[: self.rank])


@dataclass(frozen=True)
class LossInputs:
    """One process's training-forward outputs and labels.

    ``rows`` marks the slots whose target distribution is computed (every step's valid slots are
    among them); ``target_logp`` and the per-step predicted log-probs are over those rows, row-major.
    """

    pred: tuple[torch.Tensor, ...]  # steps × [B, T, H] G^{(j)} (with gradient)
    valid: tuple[torch.Tensor, ...]  # steps × [B, T] bool, slots in step j's loss
    target: torch.Tensor  # [B, T, H] f_{t+1}
    rows: torch.Tensor  # [B, T] bool
    target_logp: torch.Tensor | None  # [N, V] float32+ log softmax(lm_head(f_{t+1})) over rows (no gradient);
    # None with chunk_rows: the vocabulary terms then compute it block by block (chunked_loss.py)
    head: Callable[[torch.Tensor], torch.Tensor]  # the target's frozen LM head: [..., H] -> [..., V] logits
    world: Collective = field(default_factory=SingleProcess)
    chunk_rows: int = 0  # > 0: soft CE and top-K over blocks of this many rows, never [N, V] at once
    target_logp_of: Callable[[torch.Tensor], torch.Tensor] | None = None  # features -> exact target log-probs
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    def chunked(self, step: int, top_k: int | None = None) -> torch.Tensor:  # [N] per-slot loss over rows
        """The soft CE (or top-K distillation) of ``step`` per row, block by block (chunk_rows > 0)."""
        from .chunked_loss import per_slot_vocab_loss

        return per_slot_vocab_loss(self.pred[step - 1][self.rows], self.target[self.rows], self.head,
                                   self.target_logp_of, self.chunk_rows, top_k)

    @property
    def steps(self) -> int:
        return len(self.pred)

    def pred_logp(self, step: int) -> torch.Tensor:  # [N, V] log softmax(lm_head(G^{(step)})) over rows
        """Computed once per step and shared by the terms that need it (the LM head dominates the cost)."""
        key = ("logp", step)
        if key not in self._memo:
            logits = self.head(self.pred[step - 1][self.rows])
            self._memo[key] = torch.log_softmax(_upcast(logits), -1)
        return self._memo[key]

    def target_p(self) -> torch.Tensor:  # [N, V]
        if "p" not in self._memo:
            self._memo["p"] = self.target_logp.exp()
        return self._memo["p"]

    def row_valid(self, step: int) -> torch.Tensor:  # [N] bool, step's valid slots among rows
        return self.valid[step - 1][self.rows]


@dataclass(frozen=True)
class LossPart:
    """One normalised piece of the objective: weight × sum / global count."""

    name: str  # e.g. "regression/2", "csra/1-3"
    sum: torch.Tensor  # scalar, this process's sum (with gradient)
    count: torch.Tensor  # scalar, this process's count
    weight: float


def _step_weight(settings: LossSettings, step: int) -> float:
    return settings.step_decay ** (step - 1)


def regression_loss(inputs: LossInputs, settings: LossSettings) -> tuple[LossPart, ...]:
    """SmoothL1(G^{(j)}_t, f_{t+1}), mean over the hidden dimension, summed over valid slots."""
    parts = []
    for j in range(1, inputs.steps + 1):
        valid = inputs.valid[j - 1]
        pred = inputs.pred[j - 1][valid]
        target = inputs.target[valid].to(pred.dtype)
        per_slot = F.smooth_l1_loss(_upcast(pred), _upcast(target), reduction="none",
                                    beta=settings.smooth_l1_beta).mean(-1)
        parts.append(LossPart(f"regression/{j}", per_slot.sum(), valid.sum(),
                              settings.regression_weight * _step_weight(settings, j)))
    return tuple(parts)


def soft_ce_loss(inputs: LossInputs, settings: LossSettings) -> tuple[LossPart, ...]:
    """−Σ_x p(x) log p̂(x) with p the target's distribution at position t+1 (from f_{t+1})."""
    parts = []
    p = None if inputs.chunk_rows else inputs.target_p()
    for j in range(1, inputs.steps + 1):
        keep = inputs.row_valid(j)
        per_slot = inputs.chunked(j) if p is None else -(p * inputs.pred_logp(j)).sum(-1)  # [N]
        parts.append(LossPart(f"ce/{j}", per_slot[keep].sum(), keep.sum(),
                              settings.ce_weight * _step_weight(settings, j)))
    return tuple(parts)


def topk_distill_loss(inputs: LossInputs, settings: LossSettings) -> tuple[LossPart, ...]:
    """HASS: −Σ_{x ∈ topK(p)} p(x) log p̂(x), K = ``distill_k``."""
    if inputs.chunk_rows:
        return tuple(LossPart(f"topk/{j}", inputs.chunked(j, settings.distill_k)[inputs.row_valid(j)].sum(),
                              inputs.row_valid(j).sum(), settings.distill_weight * _step_weight(settings, j))
                     for j in range(1, inputs.steps + 1))
    key = ("topk", settings.distill_k)
    if key not in inputs._memo:
        k = min(settings.distill_k, inputs.target_logp.shape[-1])
        inputs._memo[key] = inputs.target_logp.topk(k, dim=-1).indices  # [N, K]
    idx = inputs._memo[key]
    p_top = inputs.target_p().gather(-1, idx)
    parts = []
    for j in range(1, inputs.steps + 1):
        keep = inputs.row_valid(j)
        per_slot = -(p_top * inputs.pred_logp(j).gather(-1, idx)).sum(-1)
        parts.append(LossPart(f"topk/{j}", per_slot[keep].sum(), keep.sum(),
                              settings.distill_weight * _step_weight(settings, j)))
    return tuple(parts)


def csra_pairs(steps: int, anchor: str) -> tuple[tuple[int, int], ...]:
    """Ordered (anchor step, candidate step) pairs."""
    if anchor == "step1-stopgrad":
        return tuple((1, b) for b in range(2, steps + 1))
    return tuple((a, b) for a in range(1, steps + 1) for b in range(1, steps + 1) if a != b)


def csra_loss(inputs: LossInputs, settings: LossSettings) -> tuple[LossPart, ...]:
    """CORAL's Cross-Step Representation Alignment (docs/methods.md §5).

    For a pair (a, b): anchors F_a[i], positive F_b[i], candidates F_b[k] over the pair's valid slots
    (both steps valid and t ≥ max(a, b) − 1) of the same sequence, or of the whole global batch with
    ``in-batch`` negatives; loss = Σ_i −log softmax_k(cos(F_a[i], F_b[k]) / τ_c)[i].
    """
    pairs = csra_pairs(inputs.steps, settings.csra_anchor)
    if not pairs:
        return ()
    # Cosines / τ_c reach ±14 at τ_c = 0.07: keep them out of bf16 autocast.
    with torch.autocast(inputs.pred[0].device.type, enabled=False):
        return _csra(inputs, settings, pairs)


def _csra(inputs: LossInputs, settings: LossSettings, pairs: tuple[tuple[int, int], ...]) -> tuple[LossPart, ...]:
    normed = [F.normalize(_upcast(p), dim=-1) for p in inputs.pred]  # [B, T, H] each
    t = torch.arange(inputs.pred[0].shape[1], device=inputs.pred[0].device)
    weight = settings.csra_weight / len(pairs)
    parts = []
    for a, b in pairs:
        fa, fb = normed[a - 1], normed[b - 1]
        if settings.csra_anchor == "step1-stopgrad":
            fa = fa.detach()
        keep = inputs.valid[a - 1] & inputs.valid[b - 1] & (t >= max(a, b) - 1)  # [B, T]
        if settings.csra_negatives == "same-sequence":
            total = _info_nce_same_sequence(fa, fb, keep, settings.csra_temperature)
        else:
            total = _info_nce_in_batch(fa[keep], fb[keep], settings.csra_temperature, inputs.world)
        parts.append(LossPart(f"csra/{a}-{b}", total, keep.sum(), weight))
    return tuple(parts)


def _info_nce_same_sequence(fa: torch.Tensor, fb: torch.Tensor, keep: torch.Tensor, tau: float) -> torch.Tensor:
    sim = torch.bmm(fa, fb.transpose(1, 2)) / tau  # [B, T, T] anchor row, candidate column
    # A finite fill (not −inf): masked columns get exactly zero probability and gradient, and rows
    # without any candidate stay finite (they are dropped below).
    sim = sim.masked_fill(~keep[:, None, :], torch.finfo(sim.dtype).min)
    lse = torch.logsumexp(sim, dim=-1)  # [B, T]
    pos = sim.diagonal(dim1=1, dim2=2)  # [B, T]
    return (lse - pos)[keep].sum()


def _info_nce_in_batch(fa: torch.Tensor, fb: torch.Tensor, tau: float, world: Collective) -> torch.Tensor:
    cands, start = world.gather_rows(fb)  # [N_total, H]
    sim = fa @ cands.T / tau  # [n, N_total]
    target = torch.arange(fa.shape[0], device=fa.device) + start
    return F.cross_entropy(sim, target, reduction="sum")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# One registry: term name → loss function and the setting that weighs it (0 = off, not computed).
LOSSES: dict[str, Callable[[LossInputs, LossSettings], tuple[LossPart, ...]]] = {
    "regression": regression_loss,
    "soft_ce": soft_ce_loss,
    "topk": topk_distill_loss,
    "csra": csra_loss,
}
_WEIGHT_OF = {"regression": "regression_weight", "soft_ce": "ce_weight", "topk": "distill_weight",
              "csra": "csra_weight"}


def loss_parts(inputs: LossInputs, settings: LossSettings) -> tuple[LossPart, ...]:
    """Every enabled term's parts, in registry order (the same on every process)."""
    parts: list[LossPart] = []
    for name, fn in LOSSES.items():
        if getattr(settings, _WEIGHT_OF[name]) != 0:
            parts.extend(fn(inputs, settings))
    return tuple(parts)


@dataclass(frozen=True)
class CombinedLoss:
    """The objective of one batch."""

    local: torch.Tensor  # scalar with gradient: this process's share (the shares sum to the global loss)
    value: float  # the global loss
    terms: dict[str, float]  # part name → global mean (sum / count), NaN where the count is 0
    counts: dict[str, int]  # part name → global count
    weights: dict[str, float]  # part name → weight (value = Σ weight · term)


def combine(parts: tuple[LossPart, ...], world: Collective) -> CombinedLoss:
    """Σ weight · sum / global count, with one all-reduce for all counts and sums."""
    if not parts:
        raise ValueError("no loss term is enabled")
    ref = parts[0].sum
    counts = torch.stack([p.count.to(torch.float64) for p in parts]).to(ref.device)
    sums = torch.stack([p.sum.detach().to(torch.float64) for p in parts])
    reduced = world.sum(torch.cat((counts, sums)))
    g_counts, g_sums = reduced[: len(parts)], reduced[len(parts):]
    local = sum(p.weight * p.sum / g_counts[i].clamp_min(1).to(p.sum.dtype) for i, p in enumerate(parts))
    value = float(sum(p.weight * g_sums[i] / g_counts[i].clamp_min(1) for i, p in enumerate(parts)))
    terms = {p.name: float(g_sums[i] / g_counts[i]) if g_counts[i] > 0 else float("nan") for i, p in enumerate(parts)}
    return CombinedLoss(local=local, value=value, terms=terms,
                        counts={p.name: int(g_counts[i]) for i, p in enumerate(parts)},
                        weights={p.name: p.weight for p in parts})
