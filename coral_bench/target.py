"""The target model: an HF causal LM and the KV cache it owns.

This is the only module that touches the transformers cache and attention-mask API (DESIGN.md §3):
the next API change should touch one file. Vanilla decoding runs a one-node tree through the plain
causal path (no mask, no hidden states beyond the last layer's output, logits for one row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from .tree import DraftTree


class TargetError(ValueError):
    """A target that cannot do what was asked (context too long, unsupported attention...)."""


@dataclass(frozen=True)
class TargetOutput:
    """One target forward: logits for the rows that need them, post-norm features for all rows."""

    logits: torch.Tensor  # [R, V] float32 (float64 for a float64 model); R = 1 after prefill (last position), N after scoring a tree
    features: torch.Tensor  # [N, H] model dtype, the input of lm_head (after the final norm)


class Target:
    """Wraps an HF causal LM (batch size 1) and owns its KV cache.

    Life cycle per sample: ``reset()`` → ``prefill(ids)`` → repeated ``score(tree)`` + ``commit(path)``.
    After ``prefill`` of P tokens the cache holds positions 0…P−1; ``score`` appends the tree's N
    nodes; ``commit`` keeps the accepted path and drops the rest.
    """

    def __init__(self, model: PreTrainedModel, eos_token_ids: tuple[int, ...], name: str = "target"):
        attn = getattr(model.config, "_attn_implementation", None)
        if attn in ("flash_attention_2", "flash_attention_3"):
            raise TargetError(f"{name}: {attn} ignores arbitrary 4-D masks; load the target with sdpa or eager")
        if getattr(model.config, "sliding_window", None) and getattr(model.config, "use_sliding_window", True):
            # transformers skips sliding windows when a custom mask is given: tree scores would be wrong.
            raise TargetError(f"{name}: sliding-window attention is not supported for tree scoring yet")
        self.model = model.eval()
        self.name = name
        self.eos_token_ids = tuple(eos_token_ids)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048))
        self._cache: DynamicCache | None = None
        self._pending = 0  # tree nodes appended by the last score(), not yet committed

    # ---- model facts -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def cache_len(self) -> int:
        """Committed positions in the KV cache."""
        return 0 if self._cache is None else self._cache.get_seq_length() - self._pending

    def embed(self, ids: torch.Tensor) -> torch.Tensor:  # [n] -> [n, H]
        return self.model.get_input_embeddings()(ids)

    def embedding_weight(self) -> torch.Tensor:  # [V, H]
        return self.model.get_input_embeddings().weight

    def lm_head_weight(self) -> torch.Tensor:  # [V, H]
        return self.model.get_output_embeddings().weight

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., V] float32
        """The target's frozen LM head (with any logit scaling or capping of its family)."""
        logits = self.model.get_output_embeddings()(features)
        scale = getattr(self.model.config, "logit_scale", None)
        if scale is not None:
            logits = logits * scale
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        # float32 at least (fp32 scores and sampling), float64 kept for exact-equality tests
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    # ---- cache life cycle --------------------------------------------------------------------
    def reset(self) -> None:
        self._cache = DynamicCache(config=self.model.config)
        self._pending = 0

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> TargetOutput:
        """Run the prompt ``ids`` [P]; logits only for the last position."""
        self.reset()
        ids = ids.to(self.device).view(1, -1)
        out = self.model.model(input_ids=ids, cache=self._cache, use_cache=True)
        features = out.last_hidden_state[0]
        return TargetOutput(logits=self.logits_from_features(features[-1:]), features=features)

    @torch.inference_mode()
    def score(self, tree: DraftTree) -> TargetOutput:
        """One forward over every node of ``tree``; node i sees the prefix, its ancestors and itself."""
        if self._cache is None:
            raise TargetError("score() before prefill()")
        if self._pending:
            raise TargetError("score() twice without commit()")
        prefix = self.cache_len
        n = tree.size
        if prefix + n > self.max_context:
            raise TargetError(f"context of {prefix + n} tokens exceeds the target's {self.max_context}")
        ids = torch.tensor([tree.tokens], dtype=torch.long, device=self.device)
        if n == 1:  # plain causal step: the vanilla fast path, no mask machinery
            out = self.model.model(input_ids=ids, cache=self._cache, use_cache=True)
        else:
            out = self.model.model(
                input_ids=ids,
                attention_mask=self._tree_mask(tree, prefix),
                position_ids=tree.position_ids(prefix).to(self.device).view(1, -1),
                cache=self._cache,
                use_cache=True,
            )
        self._pending = n
        features = out.last_hidden_state[0]
        return TargetOutput(logits=self.logits_from_features(features), features=features)

    @torch.inference_mode()
    def commit(self, path: tuple[int, ...]) -> None:
        """Keep the prefix plus the accepted ``path`` (node indices, root first) of the last tree.

        Moves only the accepted entries down to sit right after the prefix, then crops the rest;
        never copies the whole cache.
        """
        if not self._pending:
            raise TargetError("commit() without a scored tree")
        if not path or path[0] != 0:
            raise TargetError("a committed path starts at the root (node 0)")
        prefix = self._cache.get_seq_length() - self._pending
        keep = len(path)
        if any(node != i for i, node in enumerate(path)):
            src = torch.tensor(path, dtype=torch.long, device=self.device) + prefix
            for layer in self._cache.layers:
                layer.keys[:, :, prefix : prefix + keep] = layer.keys.index_select(2, src)
                layer.values[:, :, prefix : prefix + keep] = layer.values.index_select(2, src)
        drop = self._pending - keep
        if drop:
            self._cache.crop(-drop)
        self._pending = 0

    def _tree_mask(self, tree: DraftTree, prefix: int) -> torch.Tensor:  # [1, 1, N, P + N]
        # Additive mask: 0 where attention is allowed, the dtype's minimum elsewhere. A boolean or a
        # 1/0 float mask is silently wrong with some attention implementations (METHODS.md §3).
        n = tree.size
        allowed = torch.ones(n, prefix + n, dtype=torch.bool)
        allowed[:, prefix:] = tree.ancestor_mask
        mask = torch.zeros(n, prefix + n, dtype=self.dtype)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return mask.to(self.device).view(1, 1, n, prefix + n)
