"""What a training run reads: a feature store checked against the target, split into training and
held-out sequences, planned into every epoch's length-bucketed global batches, and collated with
stored or online features; and the training split's token counts (``--loss-vocab``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from coral_bench.core.target import Target
from .batching import TrainBatch, collate_sequences, plan_epoch, slot_count, split_eval
from .online import OnlineFeatures
from .settings import TrainError, TrainSettings
from .store import MANIFEST, FeatureStore

# Held-out batches hold at most this many slots, whatever the training batch: held-out metrics use the
# full vocabulary, so each step's log-probs are [slots, V] (1.6 GB at 8,192 slots x 49,152 tokens in
# fp32), and an epoch-end evaluation at the training batch size was the peak memory of a CPU run
# (14 GB resident; two runs side by side on 24 GB were killed by the OOM killer).
EVAL_BATCH_TOKENS = 2048


def manifest_sha256(store_path: Path) -> str:
    return hashlib.sha256((Path(store_path) / MANIFEST).read_bytes()).hexdigest()


@dataclass(frozen=True)
class TrainingData:
    """The store, its split and every epoch's plan; ``online`` computes each batch's features with the
    target (a teacher-forced forward) instead of reading the store's, which may then be ids-only."""

    store: FeatureStore = field(repr=False)
    lengths: tuple[int, ...]  # [S] tokens per store sequence
    train: tuple[int, ...]  # store indices
    eval: tuple[int, ...]
    skipped: int  # sequences without any loss slot
    plans: tuple[tuple[tuple[int, ...], ...], ...]  # [epochs][batches] global batches
    eval_plan: tuple[tuple[int, ...], ...]
    manifest_sha256: str
    online: OnlineFeatures | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path, settings: TrainSettings, processes: int, target: Target) -> "TrainingData":
        store = FeatureStore(path)
        if len(store) == 0:
            raise TrainError(f"feature store {path} holds no sequences")
        online = OnlineFeatures(target, store) if settings.features == "online" else None
        hidden = target.hidden_size
        lengths = tuple(int(n) for n in store.lengths())
        widths = store.feature_widths()  # from the shard headers: opening reads no feature row
        if online is None and widths != {hidden}:
            raise TrainError(f"feature store {path} has hidden size {', '.join(map(str, sorted(widths)))}, "
                             f"the target {hidden}" + (" (an ids-only store: add --online-features)" if widths == {0}
                                                       else ""))
        usable = [i for i in range(len(store)) if lengths[i] >= 3 and bool(store.loss_mask(i)[2:].any())]
        if not usable:
            raise TrainError(f"feature store {path} has no sequence with a loss slot")
        train, held = split_eval(usable, settings.eval_fraction, settings.held_out_seed)
        plans = tuple(tuple(plan_epoch(train, lengths, settings.batch_tokens, processes, settings.seed, e))
                      for e in range(settings.epochs))
        eval_tokens = min(settings.batch_tokens, EVAL_BATCH_TOKENS)
        eval_plan = tuple(plan_epoch(held, lengths, eval_tokens, 1, settings.seed, 0, shuffle=False)) if held else ()
        return cls(store, lengths, train, held, len(store) - len(usable), plans, eval_plan, manifest_sha256(path),
                   online)

    def batch(self, indices: tuple[int, ...], dtype: torch.dtype) -> TrainBatch:
        """The padded batch of these store sequences, with stored or online features."""
        seqs = self.online.batch(indices) if self.online is not None else [self.store[i] for i in indices]
        return collate_sequences(seqs, indices, dtype)

    def slots_of(self, batch: tuple[int, ...]) -> int:
        return sum(slot_count(self.lengths[i]) for i in batch)

    def with_train_cap(self, count: int, settings: TrainSettings, processes: int) -> "TrainingData":
        """The first ``count`` training sequences (store order) replanned; the held-out split unchanged,
        so a cap never moves a sequence between training and evaluation."""
        if count < 1:
            raise TrainError(f"the training cap must be >= 1 sequence, not {count}")
        train = self.train[:count]
        plans = tuple(tuple(plan_epoch(train, self.lengths, settings.batch_tokens, processes, settings.seed, e))
                      for e in range(settings.epochs))
        return replace(self, train=train, plans=plans)


def training_counts(data: "TrainingData", vocab: int) -> torch.Tensor:  # [V] int64
    """Loss-token frequencies over the training split (the tokens the drafter has to predict)."""
    counts = torch.zeros(vocab, dtype=torch.long)
    for i in data.train:
        seq = data.store[i]
        counts += torch.bincount(seq.ids[seq.loss_mask], minlength=vocab)[:vocab]
    return counts


def most_frequent(counts: torch.Tensor, n: int) -> torch.Tensor:  # [n] int64 ascending
    """The ``n`` most frequent token ids (ties: the lower id first), in ascending id order."""
    if not 1 <= n <= counts.numel():
        raise TrainError(f"loss_vocab must be in 1…{counts.numel()} (the target's vocabulary), not {n}")
    return torch.sort(torch.sort(counts, descending=True, stable=True).indices[:n]).values


def check_store(manifest: dict[str, Any], target: Target, where: str | Path, features: str = "stored") -> None:
    """Refuse unfinished stores, stores built with another target's embedding, and ids-only stores
    unless the features are computed online."""
    from ..drafters.checkpoint import embedding_sha256

    if features == "stored" and "features" in manifest and manifest["features"] is None:
        raise TrainError(f"{where} is an ids-only store: compute its features first (gen-data --from-ids) "
                         "or train with --online-features")
    if manifest.get("complete") is False:
        raise TrainError(f"{where} is incomplete: finish it first (gen-data --resume)")
    identity = manifest.get("target")
    want = identity.get("embedding_sha256") if isinstance(identity, dict) else None
    if want is not None and want != embedding_sha256(target.embedding_weight()):
        raise TrainError(f"{where} was built with another target ({identity.get('name')}): token embeddings differ")
