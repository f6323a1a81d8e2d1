"""The target model: an HF causal LM and the KV cache it owns.

This is the only module that touches the transformers cache and attention-mask API (docs/design.md §3):
the next API change should touch one file. Vanilla decoding runs a one-node tree through the plain
causal path (no mask, no hidden states beyond the last layer's output, logits for one row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from coral_bench.core.tree import DraftTree


class TargetError(ValueError):
    """A target that cannot do what was asked (context too long, unsupported attention...)."""


@dataclass(frozen=True)
class TargetOutput:
    """One target forward: logits for the rows that need them, post-norm features for all rows."""

    logits: torch.Tensor  # [R, V] float32 (float64 for a float64 model); R = 1 after prefill (last position), N after scoring a tree
    features: torch.Tensor  # [N, H] model dtype, the input of lm_head (after the final norm)


@dataclass(frozen=True)
class EarlyExitDraft:
    """A greedy chain drafted by the target's first layers (``Target.early_exit_chain``)."""

    tokens: tuple[int, ...]  # [K] drafted tokens, each the argmax of the row before it
    logits: torch.Tensor  # [K, V] float32 (float64 for a float64 model): row i predicts tokens[i]


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
        return self.finish_logits(self.model.get_output_embeddings()(features))

    def finish_logits(self, logits: torch.Tensor) -> torch.Tensor:  # [..., R] -> [..., R]
        """Logit scaling / capping of the model family and the float32+ promotion, for logits from the
        head or from a slice of its rows (the drafters' routed and subset heads)."""
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
        if tree.is_chain:  # a chain is causal: the plain path (vanilla's one-node trees included), no mask
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

    @torch.inference_mode()
    def discard(self) -> None:
        """Drop the last scored tree, committing nothing (the profile pass re-scores at one context)."""
        if self._pending:
            self._cache.crop(-self._pending)
            self._pending = 0

    def _tree_mask(self, tree: DraftTree, prefix: int) -> torch.Tensor:  # [1, 1, N, P + N]
        # Additive mask: 0 where attention is allowed, the dtype's minimum elsewhere. A boolean or a
        # 1/0 float mask is silently wrong with some attention implementations (docs/methods.md §3).
        n = tree.size
        allowed = torch.ones(n, prefix + n, dtype=torch.bool)
        allowed[:, prefix:] = tree.ancestor_mask
        mask = torch.zeros(n, prefix + n, dtype=self.dtype)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return mask.to(self.device).view(1, 1, n, prefix + n)

    # ---- early exit (self-speculation) -------------------------------------------------------
    # The first N decoder layers, the final norm and the LM head, run over the target's own KV cache:
    # the keys and values of layers 0…N−1 at committed positions are exactly what an early-exit
    # model with the same weights would compute for them (LayerSkip-style cache reuse), so the
    # drafter needs no prefill and no cache of its own. Its entries are removed before returning.

    @torch.inference_mode()
    def early_exit_chain(self, root: int, layers: int, length: int) -> EarlyExitDraft:
        """Draft ``length`` tokens greedily after ``root`` from the first ``layers`` decoder layers.

        Call between ``commit`` (or ``prefill``) and ``score``: ``root`` sits at position
        ``cache_len``, draft i at ``cache_len + i + 1``. ``length`` sequential one-token forwards of
        ``layers`` layers; the cache is left exactly as it was (also when a forward raises).
        """
        if self._cache is None:
            raise TargetError("early_exit_chain() before prefill()")
        if self._pending:
            raise TargetError("early_exit_chain() between score() and commit()")
        if not 1 <= layers <= self.num_layers:
            raise TargetError(f"early exit after {layers} layers: {self.name} has {self.num_layers}")
        if length < 1:
            raise TargetError("early_exit_chain() needs length >= 1")
        prefix = self.cache_len
        if prefix + length > self.max_context:
            raise TargetError(f"context of {prefix + length} tokens exceeds the target's {self.max_context}")
        tokens: list[int] = []
        rows: list[torch.Tensor] = []
        token = root
        try:
            for i in range(length):
                features = self._early_exit_step(token, prefix + i, layers, self._cache)  # [1, H]
                rows.append(self.logits_from_features(features)[0])
                token = int(rows[-1].argmax())
                tokens.append(token)
        finally:
            # Crop every touched layer back to the committed prefix: a forward that raised part-way
            # leaves layers with different lengths, and each must lose exactly its own extra entries.
            for layer in self._cache.layers[:layers]:
                extra = layer.get_seq_length() - prefix
                if extra > 0:
                    layer.crop(-extra)
        return EarlyExitDraft(tokens=tuple(tokens), logits=torch.stack(rows))

    @torch.inference_mode()
    def early_exit_check(self, probe: int = 4) -> None:
        """Refuse model families whose decoder forward is not embed → layers → norm (e.g. Gemma's
        embedding scale): with all layers, the one-token early-exit loop must reproduce the
        model's own forward on a short probe, or its drafts would be silently worse than they should."""
        base = self.model.base_model
        if not all(hasattr(base, name) for name in ("layers", "norm", "rotary_emb")):
            raise TargetError(f"{self.name}: early exit needs a Llama-style decoder (layers, norm, rotary_emb)")
        ids = (torch.arange(probe, device=self.device) * 7 + 3) % self.vocab_size  # [probe] arbitrary tokens
        want = base(input_ids=ids.view(1, -1), use_cache=False).last_hidden_state[0]  # [probe, H]
        cache = DynamicCache(config=self.model.config)
        got = torch.cat([self._early_exit_step(int(t), i, self.num_layers, cache) for i, t in enumerate(ids)])
        error = float((got - want).float().norm() / want.float().norm().clamp_min(1e-12))
        tolerance = 5e-2 if self.dtype in (torch.bfloat16, torch.float16) else 1e-4
        if not error <= tolerance:
            raise TargetError(f"{self.name}: early exit needs a plain embed → layers → norm forward; this model's "
                              f"differs (relative error {error:.2g} with all layers)")

    def _early_exit_step(self, token: int, position: int, layers: int, cache: DynamicCache) -> torch.Tensor:  # [1, H]
        """One token through the first ``layers`` decoder layers and the final norm, appended to ``cache``.

        A single query attends to every cached key, so no mask is needed (any attention backend).
        """
        base = self.model.base_model
        ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
        positions = torch.tensor([[position]], dtype=torch.long, device=self.device)
        hidden = self.model.get_input_embeddings()(ids)  # [1, 1, H]
        rotary = base.rotary_emb(hidden, position_ids=positions)
        for layer in base.layers[:layers]:
            out = layer(hidden, attention_mask=None, position_ids=positions, cache=cache, use_cache=True,
                        position_embeddings=rotary)
            hidden = out[0] if isinstance(out, tuple) else out
        return base.norm(hidden)[0]
