"""The EAGLE-style drafter (EAGLE-2, HASS and CORAL checkpoints) and the EAGLE-2 dynamic tree.

Bookkeeping follows docs/methods.md §2 exactly. Drafter slot s has input (embed(x_{s+1}), f_s) and sits
at RoPE position s; the cache holds slots built from real target features only:

- ``begin``: runs slots 0…P−1 with (embed(x_1), f_0)…(embed(x_P), f_{P−1}), x_P = the first root.
- ``commit``: stores the emitted tokens (a_1…a_L, b) and the target features of the accepted path
  nodes (f_p…f_{p+L}); no forward.
- ``propose(root)``: one forward over the L+1 stored slots, then the tree from the last slot's
  output; tree entries are appended to the cache while expanding and dropped afterwards.

Draft head (docs/methods.md §6): by default the target's full LM head + log-softmax + top-k. A
:class:`~coral_bench.drafters.draft_heads.DraftHead` replaces it: CORAL's routed head (``coral-router``,
each tree node picks its own groups; |∪ selected groups| per forward goes into
``DraftTree.head_union``) or FR-Spec's frequency subset (``@vocab=V`` on any EAGLE-style drafter).
Settings ride on the checkpoint argument: ``NAME:CKPT@vocab=V@freq=STORE@router_k=K@score=S``
(``options.split_argument``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .options import MethodError, split_argument
from coral_bench.core.target import Target, TargetOutput
from coral_bench.core.tree import DraftTree, TreeShape, Verdict, forwards_for_depth
from coral_bench.core.drafter import DraftContext, DrafterError, DrafterSettings, generator_for
from .checkpoint import EagleCheckpoint, load_checkpoint
from .eagle_model import DraftKVCache, EagleConfig, EagleConfigError, EagleModel
from .draft_heads import DraftHead, HeadLayout, RoutedHead, SubsetHead
from .router import SCORES, grouping_from, router_from
from .vocab_grouping import COUNTS_KEY, store_token_counts

RANDOM_CHECKPOINT = "random"


@dataclass(frozen=True)
class EagleInfo:
    """Where a drafter's weights came from (recorded with every run)."""

    checkpoint: str | None  # folder, or None for random weights
    embedding: str  # "target" or "checkpoint": whose token embedding the drafter uses
    config: EagleConfig
    metadata: dict[str, Any] = field(default_factory=dict)  # the checkpoint's coral_bench section
    seed: int | None = None  # random weights only
    head: dict[str, Any] = field(default_factory=lambda: {"kind": "full"})  # the draft head (DraftHead.describe())
    weights_sha256: str | None = None  # of the checkpoint's weights file

    def record(self) -> dict[str, Any]:
        """What a run's results say about these weights: where from, their hash, how they were trained."""
        from coral_bench.paths import portable_path

        head = {k: v for k, v in self.head.items() if k != "counts" and not isinstance(v, (list, dict))}
        return {"checkpoint": portable_path(self.checkpoint) if self.checkpoint else None,
                "weights_sha256": self.weights_sha256, "random_seed": self.seed,
                "trained": training_summary(self.metadata), "head": head}


# The loss settings the tuning sweep varies (scripts/sweep-trials.txt): a report shows them per drafter.
TUNED_LOSS_SETTINGS = ("distill_weight", "distill_k", "step_decay", "csra_weight", "csra_temperature", "csra_anchor")


def training_summary(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The facts of a checkpoint's ``coral_bench`` section that results carry: method, budget, held-out
    top-1 by depth, the tuned loss settings and, for a routed drafter, the router's own budget
    (``None`` for a checkpoint not written by ``coral-bench train``)."""
    if not metadata:
        return None
    budget, loss = metadata.get("budget") or {}, metadata.get("loss") or {}
    out: dict[str, Any] = {k: metadata[k] for k in ("method", "git_hash") if k in metadata}
    out |= {k: budget[k] for k in ("epochs", "optimizer_steps", "tokens", "wall_time_s", "complete") if k in budget}
    if accuracy := (metadata.get("eval") or {}).get("accuracy"):
        out["heldout_top1"] = list(accuracy)
    if tuned := {k: loss[k] for k in TUNED_LOSS_SETTINGS if k in loss}:
        out["loss"] = tuned
    settings = metadata.get("settings") or {}
    out |= {k: settings[k] for k in ("steps", "history") if k in settings}
    router_budget = ((metadata.get("router") or {}).get("training") or {}).get("budget")
    if router_budget:
        out["router"] = dict(router_budget)
    return out or None


@dataclass(frozen=True)
class Candidates:
    """Every scored draft candidate of one EAGLE-2 tree, stored level by level (docs/methods.md §3).

    A parent is always stored before its children, so ties broken by index favour the parent.
    """

    tokens: torch.Tensor  # [C] int64
    logprobs: torch.Tensor  # [C] float32+, the candidate's own draft log-prob
    scores: torch.Tensor  # [C] float32+, cumulative log-prob along the root path
    parents: torch.Tensor  # [C] int64 candidate index of the parent, -1 for children of the root


def rerank(cand: Candidates, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EAGLE-2 rerank: the ``keep`` best candidates by score, ties broken by candidate index.

    Returns the chosen candidate indices in ascending order [M] (parents before children) and each
    chosen node's parent as a node index of the final tree [M] (root = 0, chosen[j] = node j + 1).
    Raises AssertionError if the chosen set is not connected (impossible when child scores never
    exceed their parent's and parents precede children, which log-probs ≤ 0 guarantee).
    """
    count = cand.scores.shape[0]
    keep = min(keep, count)
    if keep == count:
        chosen = torch.arange(count, device=cand.scores.device)
    else:
        # A stable descending sort keeps equal scores in index order: parents win ties (docs/methods.md §3).
        order = torch.sort(cand.scores, descending=True, stable=True).indices
        chosen = torch.sort(order[:keep]).values  # [M] ascending = topological
    par = cand.parents[chosen]  # [M] candidate index, -1 = root
    slot = torch.searchsorted(chosen, par.clamp_min(0)).clamp_max(keep - 1)
    connected = (par < 0) | (chosen[slot] == par)
    if not bool(connected.all()):
        raise AssertionError("EAGLE-2 rerank chose a candidate without its parent (tree not connected)")
    node_parents = torch.where(par < 0, 0, slot + 1)
    return chosen, node_parents


def _top_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k tokens and their log-probs [..., k] without materialising a full log-softmax."""
    vals, ids = logits.topk(k, dim=-1)
    return vals - logits.logsumexp(dim=-1, keepdim=True), ids


class EagleDrafter:
    """EAGLE-style drafter over a target's frozen embedding and LM head (docs/methods.md §2, §3)."""

    def __init__(
        self,
        target: Target,
        model: EagleModel,
        settings: DrafterSettings,
        info: EagleInfo,
        embed_weight: torch.Tensor | None = None,  # [V, H] the checkpoint's embedding, if chosen
        head: DraftHead | None = None,  # None: the target's full LM head
    ):
        self.target = target
        self.model = model.eval()
        self.settings = settings
        self.info = info
        self._embed_weight = embed_weight
        self.head = head
        if head is not None and settings.tree.kind != "chain" and settings.tree.top_k > head.min_choices():
            raise DrafterError(f"tree top_k {settings.tree.top_k} exceeds the {head.min_choices()} tokens the draft "
                               f"head lets a node choose from: raise router_k or @vocab, or lower top_k")
        self.cache = DraftKVCache()
        self._root: int | None = None  # the root the next propose() must receive
        self._last_hidden: torch.Tensor | None = None  # [H] output of the last cached slot
        self._pending_tokens: tuple[int, ...] = ()  # x_{s+1} of the slots not yet run
        self._pending_feats: torch.Tensor | None = None  # [L+1, H] f_s of those slots

    # ---- protocol ----------------------------------------------------------------------------
    def parameter_count(self) -> int:
        """fc + decoder layer (+ the router); the embedding and LM head are the target's (frozen)."""
        return self.model.parameter_count() + (self.head.parameter_count() if self.head is not None else 0)

    @torch.inference_mode()
    def begin(self, context: DraftContext) -> None:
        prompt = context.prompt_ids
        feats = context.prefill.features  # [P, H] f_0 … f_{P−1}
        if not prompt or feats.shape[0] != len(prompt):
            raise DrafterError(f"prefill features {tuple(feats.shape)} do not match a prompt of {len(prompt)} tokens")
        self.cache.reset()
        self._pending_tokens, self._pending_feats = (), None
        # Slots 0…P−1: (embed(x_1), f_0) … (embed(x_P), f_{P−1}), x_P = the first root.
        self._last_hidden = self._run_slots((*prompt[1:], context.first_token), feats)
        self._root = context.first_token

    @torch.inference_mode()
    def propose(self, root: int) -> DraftTree:
        if self._root is None:
            raise DrafterError("propose() before begin()")
        if root != self._root:
            raise DrafterError(f"propose() got root {root}, but the last committed token is {self._root}")
        if self._pending_tokens:
            # The one forward over the L+1 slots accepted last cycle: (embed(a_1), f_p) … (embed(b), f_{p+L}).
            self._last_hidden = self._run_slots(self._pending_tokens, self._pending_feats)
            self._pending_tokens, self._pending_feats = (), None
        return self._build_tree(root, self._last_hidden)

    @torch.inference_mode()
    def commit(self, verdict: Verdict, scored: TargetOutput) -> None:
        if self._pending_tokens:
            raise DrafterError("commit() twice without propose()")
        if len(verdict.tokens) != len(verdict.path):
            raise DrafterError(
                f"verdict has {len(verdict.tokens)} tokens for a path of {len(verdict.path)} nodes "
                "(expected the accepted tokens plus the bonus)"
            )
        path = torch.tensor(verdict.path, dtype=torch.long, device=scored.features.device)
        self._pending_tokens = tuple(verdict.tokens)  # a_1 … a_L, b
        self._pending_feats = scored.features.index_select(0, path)  # [L+1, H] f_p … f_{p+L}
        self._root = verdict.bonus

    # ---- internals ---------------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor) -> torch.Tensor:  # [...] -> [..., H]
        if self._embed_weight is None:
            return self.target.embed(ids)
        return F.embedding(ids, self._embed_weight)

    def _run_slots(self, next_tokens: tuple[int, ...], feats: torch.Tensor) -> torch.Tensor:  # -> [H]
        """Append real-feature slots to the cache; the output of the last one."""
        device = feats.device
        start = len(self.cache)
        ids = torch.tensor(next_tokens, dtype=torch.long, device=device)
        positions = torch.arange(start, start + len(next_tokens), device=device)
        out = self.model(self._embed(ids)[None], feats[None].to(self.model.fc.weight.dtype),
                         positions[None], cache=self.cache, last_only=True)
        return out.hidden[0, -1]

    def _top(self, features: torch.Tensor, k: int, unions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k draft log-probs and tokens [R, k] of features [R, H] through the draft head."""
        if self.head is None:
            return _top_logprobs(self.target.logits_from_features(features), k)
        top = self.head.top(features, k)
        if top.union is not None:
            unions.append(top.union)
        return top.logprobs, top.tokens

    def _build_tree(self, root: int, last_hidden: torch.Tensor) -> DraftTree:
        """EAGLE-2 (docs/methods.md §3); a chain is top-1 at every step."""
        shape: TreeShape = self.settings.tree
        chain = shape.kind == "chain"
        vocab = self.target.vocab_size
        k = 1 if chain else min(shape.top_k, vocab)
        expansions = shape.depth - 1 if chain else shape.depth
        device = last_hidden.device
        base_len = len(self.cache)

        unions: list[int] = []  # |∪ selected router groups| per forward (routed heads)
        # Level 1 from the last real slot's output. Log-probs and scores in fp32 at least.
        lp, tok = (t[0] for t in self._top(last_hidden[None], k, unions))  # [k]
        tokens, logprobs, scores_all, parents = [tok], [lp], [lp], [torch.full((k,), -1, device=device)]
        frontier_tok = tok  # [k]
        frontier_score = lp  # [k]
        frontier_cand = torch.arange(k, device=device)  # [k] candidate index of each frontier node
        frontier_feat = last_hidden.expand(k, -1)  # [k, H] input feature: the parent's output
        ancestors = torch.zeros(k, 0, dtype=torch.bool, device=device)  # [k, k(i−1)] in earlier frontiers
        eye = torch.eye(k, dtype=torch.bool, device=device)
        n_cand = k
        try:
            for i in range(1, expansions + 1):
                # Expansion i: the frontier sits at position cache_len + i − 1 and sees the cache,
                # its ancestor in each earlier frontier, and itself (docs/methods.md §2).
                tree_part = torch.cat((ancestors, eye), dim=1)  # [k, k·i]
                mask = torch.ones(k, base_len + k * i, dtype=torch.bool, device=device)
                mask[:, base_len:] = tree_part
                positions = torch.full((1, k), base_len + i - 1, dtype=torch.long, device=device)
                out = self.model(self._embed(frontier_tok)[None], frontier_feat[None], positions,
                                 attn_mask=mask[None, None], cache=self.cache).hidden[0]  # [k, H]
                child_lp, child_tok = self._top(out, k, unions)  # [k, k]
                cum = (frontier_score[:, None] + child_lp).reshape(-1)  # [k·k], row = frontier node
                tokens.append(child_tok.reshape(-1))
                logprobs.append(child_lp.reshape(-1))
                scores_all.append(cum)
                parents.append(frontier_cand.repeat_interleave(k))
                if i < expansions:  # the global top-k children become the next frontier
                    sel = cum.topk(k).indices  # [k]
                    rows = sel // k
                    frontier_tok = child_tok.reshape(-1)[sel]
                    frontier_score = cum[sel]
                    frontier_cand = n_cand + sel
                    frontier_feat = out[rows]
                    ancestors = tree_part[rows]
                n_cand += k * k
        finally:
            self.cache.truncate(base_len)  # tree entries never stay in the drafter cache

        cand = Candidates(torch.cat(tokens), torch.cat(logprobs), torch.cat(scores_all), torch.cat(parents))
        keep = cand.scores.shape[0] if chain else shape.total_tokens - 1
        chosen, node_parents = rerank(cand, keep)
        # Sibling tokens are distinct by construction: a node's children are one top-k row.
        return DraftTree(
            tokens=(root, *cand.tokens[chosen].tolist()),
            parents=(-1, *node_parents.tolist()),
            forwards=forwards_for_depth(expansions),
            draft_logprobs=(0.0, *cand.logprobs[chosen].tolist()),
            head_union=tuple(unions),
        )


def build_eagle(target: Target, settings: DrafterSettings) -> EagleDrafter:
    """Drafter factory: load ``settings.checkpoint`` (EAGLE/HASS/coral-bench format), or build random
    weights shaped from the target's config when the checkpoint is None or ``"random"`` (tests and
    latency profiling; seeded by ``settings.seed``). A routed checkpoint loads without its router.

    ``settings.embedding``: ``"target"`` (default) or ``"checkpoint"`` — whose token embedding to use
    when the checkpoint carries a copy (validated to be the same up to dtype rounding).

    Head settings folded into the checkpoint argument (``options.split_argument``): ``@vocab=V`` drafts
    from the V most frequent training tokens only (FR-Spec), ranked by the checkpoint's ``vocab.counts``
    (written by ``train-router``) or by ``@freq=STORE`` (a feature store's loss tokens).
    """
    return _build(target, settings, routed=False)


def build_routed(target: Target, settings: DrafterSettings) -> EagleDrafter:
    """``coral-router``: a ``train-router`` checkpoint with its LM-head router in use (docs/methods.md §6).
    ``@router_k=K`` (default: the checkpoint's) and ``@score=renorm|calibrated`` override its settings."""
    return _build(target, settings, routed=True)


def _build(target: Target, settings: DrafterSettings, routed: bool) -> EagleDrafter:
    try:
        path, options = split_argument(settings.checkpoint)
    except MethodError as err:
        raise DrafterError(str(err)) from None
    if routed and (path is None or path == RANDOM_CHECKPOINT):
        raise DrafterError(f"{settings.name} needs a checkpoint written by coral-bench train-router ({settings.name}:PATH)")
    if routed and "vocab" in options:
        raise DrafterError("@vocab (a static frequency subset) and the router are alternatives: use one")
    if not routed and ({"router_k", "score"} & options.keys()):
        raise DrafterError(f"@router_k / @score set the router: use coral-router, not {settings.name}")
    if "freq" in options and "vocab" not in options:
        raise DrafterError("@freq=STORE ranks tokens for @vocab=V: give both")
    embedding = settings.embedding
    if path in (None, RANDOM_CHECKPOINT):
        if embedding != "target":
            raise DrafterError('a random-weight drafter has no embedding of its own: use embedding="target"')
        try:
            config = EagleConfig.from_dict(
                target.model.config.to_dict(),
                vocab_size=target.vocab_size,
                max_position_embeddings=target.max_context,
            )
        except EagleConfigError as err:
            raise DrafterError(f"cannot shape a drafter for {target.name}: {err}") from None
        model = EagleModel(config)
        model.init_random(generator_for(settings.seed))
        model = model.to(device=target.device, dtype=target.dtype)
        head = _subset_head(target, options, None)
        info = EagleInfo(checkpoint=None, embedding="target", config=config, seed=settings.seed,
                         head=head.describe() if head else {"kind": "full"})
        return EagleDrafter(target, model, settings, info, head=head)
    ckpt = load_checkpoint(path, target.embedding_weight(), embedding=embedding)
    model = ckpt.build_model(dtype=target.dtype, device=target.device)
    embed = None
    if ckpt.embedding == "checkpoint":
        embed = ckpt.embed_tokens.to(device=target.device, dtype=target.dtype)
    head = _routed_head(target, ckpt, options) if routed else _subset_head(target, options, ckpt)
    info = EagleInfo(checkpoint=ckpt.path, embedding=ckpt.embedding, config=ckpt.config, metadata=ckpt.metadata,
                     head=head.describe() if head else {"kind": "full"}, weights_sha256=ckpt.weights_sha256)
    return EagleDrafter(target, model, settings, info, embed_weight=embed, head=head)


def _head_params(target: Target) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = getattr(target.model.get_output_embeddings(), "bias", None)
    return target.lm_head_weight(), bias


def _int_option(options: dict[str, str], key: str) -> int | None:
    if key not in options:
        return None
    try:
        return int(options[key])
    except ValueError:
        raise DrafterError(f"@{key} must be an integer, not {options[key]!r}") from None


def _subset_head(target: Target, options: dict[str, str], ckpt: EagleCheckpoint | None) -> SubsetHead | None:
    vocab = _int_option(options, "vocab")
    if vocab is None:
        return None
    if "freq" in options:
        counts, source = store_token_counts(options["freq"], target.vocab_size), f"feature store {options['freq']}"
    elif ckpt is not None and COUNTS_KEY in ckpt.extras:
        counts, source = ckpt.extras[COUNTS_KEY], f"{COUNTS_KEY} of {ckpt.path}"
    else:
        raise DrafterError("@vocab=V needs token frequencies: this checkpoint has none (train-router writes them); "
                           "add @freq=STORE (a feature store of the training data)")
    weight, bias = _head_params(target)
    return SubsetHead.most_frequent(counts, vocab, weight, bias, target.finish_logits, source)


def _routed_head(target: Target, ckpt: EagleCheckpoint, options: dict[str, str]) -> RoutedHead:
    section = ckpt.router
    if section is None:
        raise DrafterError(f"{ckpt.path} has no LM-head router: train one with coral-bench train-router, or load it "
                           "as coral / eagle2")
    k = _int_option(options, "router_k") or int(section["k"])
    score = options.get("score", section.get("score", "renorm"))
    if score not in SCORES:
        raise DrafterError(f"@score must be one of {SCORES}, not {score!r}")
    grouping = grouping_from(section, ckpt.extras)
    weight, bias = _head_params(target)
    layout = HeadLayout.of(grouping, weight, bias)
    router = router_from(section, ckpt.extras).to(device=target.device, dtype=target.dtype)
    return RoutedHead(router, layout, k, score, target.finish_logits)
