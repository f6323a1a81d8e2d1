"""Hidden states of chosen target layers, read on every target forward (for EAGLE-3 drafters).

The target returns its last layer's features only (``TargetOutput.features``); an EAGLE-3 drafter
also needs the inputs of three decoder layers. Forward pre-hooks on those layers keep a reference to
each input as the target runs (no copy, no extra forward), so after ``Target.prefill`` or
``Target.score`` the taps hold exactly the rows of that forward. The hooks go when the taps are
closed or garbage-collected, so a drafter that is dropped leaves the target as it was.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from torch import nn

from coral_bench.core.drafter import DrafterError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (Llama, Qwen2, Mistral…: ``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise DrafterError(f"{type(model).__name__} has no model.layers: cannot read its layer features")
    return layers


class LayerTaps:
    """The inputs of decoder layers ``layers`` in the latest target forward, concatenated per row."""

    def __init__(self, model: nn.Module, layers: Sequence[int]):
        blocks = decoder_layers(model)
        if not all(0 <= i < len(blocks) for i in layers):
            raise DrafterError(f"feature layers {list(layers)} are outside the target's {len(blocks)} layers")
        self.layers = tuple(layers)
        self._latest = _Latest()  # the hooks see it through a weak reference: they never keep it alive
        latest = weakref.ref(self._latest)

        def keep(index: int):
            def hook(module, args, kwargs):
                store = latest()
                if store is not None:
                    store[index] = args[0] if args else kwargs["hidden_states"]
            return hook

        self._handles = [blocks[i].register_forward_pre_hook(keep(i), with_kwargs=True) for i in self.layers]
        self._finalizer = weakref.finalize(self, _remove, list(self._handles))

    def features(self, rows: int) -> torch.Tensor:  # -> [rows, len(layers) · H]
        """The tapped inputs of the latest forward, which must have had ``rows`` rows."""
        missing = [i for i in self.layers if i not in self._latest]
        if missing:
            raise DrafterError(f"no target forward has run through layers {missing} since the drafter was built")
        parts = [self._latest[i][0] for i in self.layers]  # batch 1
        if any(p.shape[0] != rows for p in parts):
            raise DrafterError(f"the tapped layer features have {parts[0].shape[0]} rows, expected {rows}: "
                               "another target forward ran in between")
        return torch.cat(parts, dim=-1)

    def close(self) -> None:
        """Remove the hooks now (they are also removed when the taps are garbage-collected)."""
        self._finalizer()
        self._latest.clear()


class _Latest(dict):
    """layer index → its input in the latest forward (a dict subclass: weak references allowed)."""


def _remove(handles) -> None:
    for handle in handles:
        handle.remove()
