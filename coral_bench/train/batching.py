"""Training batches over a feature store: length-bucketed plans, per-process shards, padded tensors.

Slots (docs/methods.md §5). A stored sequence x_0…x_{L−1} with post-norm target features f_0…f_{L−1} gives
drafter slots t = 0…L−2: input (embed(x_{t+1}), f_t), label f_{t+1} (and the target distribution
softmax(lm_head(f_{t+1})) recomputed from it). Slot t is in the loss when the token it predicts,
x_{t+2}, is a response token (``loss_mask[t + 2]``); the last slot has no x_{t+2} and never is.
Masks come from the stored ``loss_mask`` (built from lengths by the writer), never from ``ids != pad``.

A *plan* is the list of global batches of one epoch (tuples of store indices): a seeded shuffle,
then pools of sequences sorted by length and cut under a padded-token budget (``batch_tokens`` ≥
rows × longest slot count), then a seeded shuffle of the batch order. Under DDP each process takes a
*shard* of every global batch (greedy token balancing, so token counts per process differ) and pads
it on its own; losses are normalised by the global count of valid slots (``losses.py``), so the
result does not depend on how a batch is sharded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence as Seq

import torch

from .store import FeatureStore, Sequence

POOL = 1024  # sequences sorted together before cutting batches ("sortish": some randomness per epoch)
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant for seed mixing


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (seed, epoch, step, sequence…)."""
    h = 0
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * _MIX + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class TrainBatch:
    """One process's padded share of a global batch (right padding)."""

    next_ids: torch.Tensor  # [B, T] int64 x_{t+1} (0 at padding)
    features: torch.Tensor  # [B, T, H] f_t, the step-1 input features (0 at padding)
    targets: torch.Tensor  # [B, T, H] f_{t+1}, the labels (0 at padding)
    valid: torch.Tensor  # [B, T] bool: slot in the loss (x_{t+2} is a response token)
    real: torch.Tensor  # [B, T] bool: slot exists (not padding)
    sequences: tuple[int, ...]  # [B] store index of each row

    @property
    def positions(self) -> torch.Tensor:  # [B, T] int64: slot t sits at RoPE position t
        b, t = self.next_ids.shape
        return torch.arange(t, device=self.next_ids.device).expand(b, t)

    @property
    def slots(self) -> int:
        """Real (non-padding) slots."""
        return int(self.real.sum())

    def to(self, device: torch.device | str) -> "TrainBatch":
        return TrainBatch(self.next_ids.to(device), self.features.to(device), self.targets.to(device),
                          self.valid.to(device), self.real.to(device), self.sequences)


def slot_count(length: int) -> int:
    """Drafter slots of a sequence of ``length`` tokens."""
    return max(length - 1, 0)


def split_eval(indices: Seq[int], fraction: float, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(train, eval) store indices: a seeded random ``fraction`` held out (at least one sequence when
    ``fraction`` > 0 and at least two sequences exist; none when ``fraction`` is 0)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"eval fraction must be in [0, 1), not {fraction}")
    count = len(indices)
    n_eval = 0 if fraction == 0 or count < 2 else min(count - 1, max(1, round(count * fraction)))
    gen = torch.Generator().manual_seed(mix_seed(seed, 0xE7A1))
    order = torch.randperm(count, generator=gen).tolist()
    held = sorted(indices[i] for i in order[:n_eval])
    kept = sorted(indices[i] for i in order[n_eval:])
    return tuple(kept), tuple(held)


def plan_epoch(
    indices: Seq[int],
    lengths: Seq[int],  # token length of every store sequence (indexed by store index)
    batch_tokens: int,
    min_sequences: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[tuple[int, ...]]:
    """Global batches of one epoch, deterministic in (seed, epoch).

    Every batch has at least ``min_sequences`` sequences (the number of processes, so that no shard is
    empty) and otherwise rows × longest slot count ≤ ``batch_tokens``; a sequence longer than the
    budget gets a batch of its own (plus company up to ``min_sequences``).
    """
    if batch_tokens < 1 or min_sequences < 1:
        raise ValueError("batch_tokens and min_sequences must be >= 1")
    if len(indices) < min_sequences:
        raise ValueError(f"{len(indices)} training sequences cannot fill batches for {min_sequences} processes")
    order = list(indices)
    gen = torch.Generator().manual_seed(mix_seed(seed, epoch, 0xBA7C))
    if shuffle:
        order = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
    batches: list[list[int]] = []
    for start in range(0, len(order), POOL):
        pool = sorted(order[start : start + POOL], key=lambda i: (-lengths[i], i))
        current: list[int] = []
        for i in pool:
            width = slot_count(lengths[current[0]]) if current else slot_count(lengths[i])
            if current and len(current) >= min_sequences and (len(current) + 1) * width > batch_tokens:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            if len(current) < min_sequences and batches:
                batches[-1].extend(current)
            else:
                batches.append(current)
    if len(batches) > 1 and len(batches[-1]) < min_sequences:
        batches[-2].extend(batches.pop())
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    return [tuple(b) for b in batches]


def shard(batch: Seq[int], lengths: Seq[int], rank: int, world: int) -> tuple[int, ...]:
    """This process's rows of a global batch: longest first to the least-loaded process (by tokens)."""
    loads = [0] * world
    parts: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(batch, key=lambda i: (-lengths[i], i)):
        r = min(range(world), key=lambda k: (loads[k], k))
        parts[r].append(i)
        loads[r] += lengths[i]
    return tuple(parts[rank])


def collate(store: FeatureStore, indices: Seq[int], dtype: torch.dtype) -> TrainBatch:
    """Pad the slots of ``indices`` (store order kept) into one batch on the CPU."""
    return collate_sequences([store[i] for i in indices], indices, dtype)


def collate_sequences(seqs: Seq[Sequence], indices: Seq[int], dtype: torch.dtype) -> TrainBatch:
    """Pad the slots of ``seqs`` (the store's sequences ``indices``, in that order) into one batch."""
    if not seqs:
        raise ValueError("cannot collate an empty batch")
    width = max(slot_count(s.ids.shape[0]) for s in seqs)
    hidden = seqs[0].features.shape[1]
    b = len(seqs)
    next_ids = torch.zeros(b, width, dtype=torch.long)
    feats = torch.zeros(b, width, hidden, dtype=dtype)
    targets = torch.zeros(b, width, hidden, dtype=dtype)
    valid = torch.zeros(b, width, dtype=torch.bool)
    real = torch.zeros(b, width, dtype=torch.bool)
    for r, s in enumerate(seqs):
        n = slot_count(s.ids.shape[0])
        if n == 0:
            continue
        next_ids[r, :n] = s.ids[1:]
        feats[r, :n] = s.features[:-1].to(dtype)
        targets[r, :n] = s.features[1:].to(dtype)
        real[r, :n] = True
        valid[r, : n - 1] = s.loss_mask[2:]  # slot t predicts x_{t+2}; the last slot has no label
    return TrainBatch(next_ids, feats, targets, valid, real, tuple(indices))


def feature_noise(batch: TrainBatch, scale: float, seed: int, step: int) -> torch.Tensor:
    """Uniform noise for the step-1 input features: U(−scale, scale) × RMS(f_t) per slot.

    EAGLE adds U(−0.1, 0.1)·512/len to raw features; here the amplitude is relative to each feature's
    own root-mean-square (recorded in the checkpoint), so it means the same for every target. Drawn
    per sequence from a generator seeded by (seed, optimizer step, store index): independent of how
    a batch is sharded across processes and of resumption. Zero at padding. Returns [B, T, H].
    """
    feats = batch.features
    noise = torch.zeros_like(feats)
    if scale == 0:
        return noise
    for r, seq in enumerate(batch.sequences):
        n = int(batch.real[r].sum())
        gen = torch.Generator().manual_seed(mix_seed(seed, step, seq, 0x7015E))
        u = torch.rand(n, feats.shape[2], generator=gen, dtype=torch.float32) * 2 - 1
        rms = feats[r, :n].detach().float().cpu().pow(2).mean(-1, keepdim=True).sqrt()
        noise[r, :n] = (u * scale * rms).to(device=feats.device, dtype=feats.dtype)
    return noise
