"""The training-feature store: token ids, target post-norm features and loss masks, in shards.

Only ids, features and masks are stored (docs/methods.md §5): the target distribution at any position is
``softmax(lm_head(f))``, recomputed exactly from the cached feature, so it is never stored.

Layout of a store directory (format ``coral-bench-features``, version 1)::

    manifest.json            format, version, target identity, sources, counts, shard list, provenance
    shard-00000.safetensors  ids [T] int32 · features [T, H] (bf16 by default) · loss_mask [T] uint8
                             · offsets [S + 1] int64 (sequence s = rows offsets[s]:offsets[s+1])

A sequence is one conversation (prompt + response ids, chat template applied); ``features[t]`` is the
target's last hidden state after its final norm at position t; ``loss_mask[t] = 1`` where token t
belongs to a response (each response's final ``<|im_end|>`` included). Shards are written whole and
renamed into place, and the manifest is rewritten after each, so an interrupted writer resumes
after the last complete shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "coral-bench-features"
VERSION = 1
MANIFEST = "manifest.json"


class StoreError(ValueError):
    """A store that is missing, corrupt, or of another format/version."""


@dataclass(frozen=True)
class Sequence:
    ids: torch.Tensor  # [L] int64
    features: torch.Tensor  # [L, H]
    loss_mask: torch.Tensor  # [L] bool


class StoreWriter:
    """Appends sequences; flushes a shard every ``shard_tokens`` tokens. Resumable."""

    def __init__(self, path: Path, manifest: dict, shard_tokens: int = 1 << 20, dtype: torch.dtype = torch.bfloat16):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        existing = self.path / MANIFEST
        if existing.exists():
            self.manifest = read_manifest(self.path)
        else:
            self.manifest = {"format": FORMAT, "version": VERSION, **manifest, "shards": [],
                             "counts": {"sequences": 0, "tokens": 0, "loss_tokens": 0}}
            self._write_manifest()
        self._pending: list[Sequence] = []
        self._pending_tokens = 0

    @property
    def sequences_done(self) -> int:
        """Sequences already in complete shards: where a resumed writer continues."""
        return self.manifest["counts"]["sequences"]

    def add(self, ids: torch.Tensor, features: torch.Tensor, loss_mask: torch.Tensor) -> None:
        if not (ids.dim() == 1 and features.dim() == 2 and ids.shape[0] == features.shape[0] == loss_mask.shape[0]):
            raise StoreError("a sequence needs ids [L], features [L, H] and loss_mask [L]")
        self._pending.append(Sequence(ids.long().cpu(), features.to(self.dtype).cpu(), loss_mask.bool().cpu()))
        self._pending_tokens += ids.shape[0]
        if self._pending_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        index = len(self.manifest["shards"])
        name = f"shard-{index:05d}.safetensors"
        lengths = torch.tensor([0] + [s.ids.shape[0] for s in self._pending])
        tensors = {
            "ids": torch.cat([s.ids for s in self._pending]).to(torch.int32),
            "features": torch.cat([s.features for s in self._pending]),
            "loss_mask": torch.cat([s.loss_mask for s in self._pending]).to(torch.uint8),
            "offsets": lengths.cumsum(0).to(torch.int64),
        }
        tmp = self.path / (name + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, self.path / name)
        counts = self.manifest["counts"]
        counts["sequences"] += len(self._pending)
        counts["tokens"] += int(tensors["ids"].numel())
        counts["loss_tokens"] += int(tensors["loss_mask"].sum())
        self.manifest["shards"].append({"file": name, "sequences": len(self._pending),
                                        "tokens": int(tensors["ids"].numel())})
        self._write_manifest()
        self._pending, self._pending_tokens = [], 0

    def close(self) -> None:
        self.flush()

    def _write_manifest(self) -> None:
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2) + "\n")
        os.replace(tmp, self.path / MANIFEST)


def read_manifest(path: Path) -> dict:
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} is not a feature store (no {MANIFEST})") from None
    except ValueError:
        raise StoreError(f"{file} is not valid JSON") from None
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if manifest.get("version", 0) > VERSION:
        raise StoreError(f"{path}: store version {manifest['version']} is newer than this coral-bench ({VERSION})")
    return manifest


class FeatureStore:
    """Random access to the sequences of a store. Each shard's ids, masks and offsets are read once
    and kept; its features are memory-mapped and sliced per sequence, so the operating system's page
    cache holds them (shared by processes reading one store, evictable) rather than each process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self._index: list[tuple[int, int]] = [(i, j) for i, shard in enumerate(self.manifest["shards"])
                                              for j in range(shard["sequences"])]
        self._shards: dict[int, _Shard] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, item: int) -> Sequence:
        shard, j = self._index[item]
        data = self._shard(shard)
        lo, hi = int(data.offsets[j]), int(data.offsets[j + 1])
        try:
            features = data.features[lo:hi]
        except Exception as err:  # a shard truncated after its header was read
            raise StoreError(f"cannot read {data.file}: {err}") from None
        return Sequence(data.ids[lo:hi].long(), features, data.loss_mask[lo:hi].bool())

    def loss_mask(self, item: int) -> torch.Tensor:  # [L] bool
        """One sequence's loss mask, without reading its features (opening a store touches no feature)."""
        shard, j = self._index[item]
        data = self._shard(shard)
        return data.loss_mask[int(data.offsets[j]) : int(data.offsets[j + 1])].bool()

    def feature_widths(self) -> set[int]:
        """The feature widths of the shards, read from their headers (0: an ids-only store)."""
        return {int(self._shard(i).features.get_shape()[1]) for i in range(len(self.manifest["shards"]))}

    def lengths(self) -> list[int]:
        """Sequence lengths, for length-sorted batching (reads every shard's offsets)."""
        out = []
        for i in range(len(self.manifest["shards"])):
            offsets = self._shard(i).offsets
            out.extend((offsets[1:] - offsets[:-1]).tolist())
        return out

    def _shard(self, i: int) -> "_Shard":
        if i not in self._shards:
            file = self.path / self.manifest["shards"][i]["file"]
            try:
                handle = safe_open(str(file), framework="pt")
                self._shards[i] = _Shard(file, handle.get_tensor("ids"), handle.get_tensor("loss_mask"),
                                         handle.get_tensor("offsets"), handle.get_slice("features"))
            except Exception as err:  # safetensors raises several types for truncated/garbage files
                raise StoreError(f"cannot read {file}: {err}") from None
        return self._shards[i]


@dataclass(frozen=True)
class _Shard:
    file: Path
    ids: torch.Tensor  # [T] int32
    loss_mask: torch.Tensor  # [T] uint8
    offsets: torch.Tensor  # [S + 1] int64
    features: Any = field(repr=False)  # a memory-mapped slice of [T, H]: features[lo:hi] reads those rows
