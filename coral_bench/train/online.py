"""Online features: a store's sequences with features computed by the target during training, for
users whose feature caches would not fit on disk (``coral-bench train --online``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence as Seq
from pathlib import Path

import torch

from coral_bench.core.target import Target
from .store import FeatureStore, Sequence
from .target_passes import teacher_forced


class OnlineFeatures:
    """The sequences of a store (ids-only or full) with features computed on the fly by a
    teacher-forced forward of the target: for caches that would not fit on disk. Yields the same
    ``Sequence`` values as ``FeatureStore``, so a trainer can consume either."""

    def __init__(self, target: Target, source: FeatureStore | Path | str, dtype: torch.dtype | None = None):
        self.target = target
        self.store = source if isinstance(source, FeatureStore) else FeatureStore(Path(source))
        self.dtype = dtype  # e.g. torch.bfloat16 to round like a stored cache; None: the target's dtype
        self.manifest = self.store.manifest
        self._ready: dict[int, Sequence] = {}  # prefetched, handed out once

    def __len__(self) -> int:
        return len(self.store)

    def lengths(self) -> list[int]:
        return self.store.lengths()

    def __getitem__(self, item: int) -> Sequence:
        if item in self._ready:
            return self._ready.pop(item)
        return self.batch([item])[0]

    def batch(self, items: Seq[int]) -> list[Sequence]:
        """Several sequences from one padded forward (cheaper than one by one)."""
        seqs = [self.store[i] for i in items]
        feats = teacher_forced(self.target, [s.ids for s in seqs])
        return [Sequence(s.ids, f if self.dtype is None else f.to(self.dtype), s.loss_mask) for s, f in zip(seqs, feats)]

    def prefetch(self, items: Seq[int]) -> None:
        """Compute ``items`` in one forward now; each is handed out once by ``self[i]`` (a trainer's
        collate that indexes one sequence at a time then costs one batched forward per batch)."""
        todo = [i for i in items if i not in self._ready]
        if todo:
            self._ready.update(zip(todo, self.batch(todo)))

    def __iter__(self) -> Iterator[Sequence]:
        for i in range(len(self)):
            yield self[i]
