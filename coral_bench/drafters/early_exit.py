"""``early-exit:N``: self-speculation with the target's first N decoder layers as the drafter.

The drafter is the target truncated after N layers, followed by the target's final norm and LM head
(LayerSkip-style early exit): no weights of its own, so its parameter count is 0.

Spec: ``--drafter early-exit[:N][@tree=SHAPE]``. For this drafter the part after ``:`` is the layer
count N, not a checkpoint path (``DrafterSettings.checkpoint`` carries it as text); the default is a
quarter of the target's layers, at least 1. N = all layers drafts the target's own greedy
continuation: every draft is accepted at T = 0, which tests the cache handling.

Cache: drafting runs over the target's committed KV for layers 0…N−1 (identical to what the
truncated model computes for the same tokens) and removes its own entries afterwards
(``Target.early_exit_chain``), so there is no drafter prefill and nothing to keep between cycles.

Trees: ``chain:K`` (default ``chain:3``) drafts K tokens greedily with K one-token forwards of N
layers (D = K). A dynamic shape ``top_k=k,depth=d,total_tokens=T`` drafts the greedy chain of
d + 1 levels and adds the k − 1 best alternatives of each level as leaves, then keeps the T − 1
candidates with the highest cumulative draft log-prob (ties to the earlier candidate, so a parent
always precedes and outranks its children). Alternatives are not expanded further: this is not an
EAGLE-2 expansion, only a cheap way to use the level's runners-up.

Targets trained without early-exit objectives draft poorly from their first layers (τ near 1 for
small N); the drafter is still lossless.
"""

from __future__ import annotations

import torch

from coral_bench.core.target import Target, TargetError, TargetOutput
from coral_bench.core.tree import DraftTree, Verdict
from coral_bench.core.drafter import DraftContext, DrafterError, DrafterSettings


def default_layers(num_layers: int) -> int:
    """A quarter of the target's layers, at least 1 (shared with the ``hf-early-exit`` peer)."""
    return max(1, num_layers // 4)


def parse_layers(text: str | None, num_layers: int) -> int:
    """The layer count after ``early-exit:`` (None: the default), checked against the target."""
    if text is None:
        return default_layers(num_layers)
    try:
        layers = int(text)
    except ValueError:
        raise DrafterError(f"early-exit:{text}: the part after ':' is a layer count (early-exit:N), "
                           f"not a checkpoint") from None
    if not 1 <= layers <= num_layers:
        raise DrafterError(f"early-exit:{layers}: N must be between 1 and the target's {num_layers} layers")
    return layers


class EarlyExitDrafter:
    def __init__(self, target: Target, settings: DrafterSettings, layers: int):
        self.target = target
        self.settings = settings
        self.layers = layers

    def begin(self, context: DraftContext) -> None:
        """Nothing to do: the target's prefill already holds the prompt's KV for the first N layers."""

    @torch.inference_mode()
    def propose(self, root: int) -> DraftTree:
        shape = self.settings.tree
        draft = self.target.early_exit_chain(root, self.layers, shape.levels)
        if shape.kind == "chain":
            return DraftTree.chain(root, draft.tokens, forwards=shape.levels)
        return _with_alternatives(root, draft.tokens, draft.logits, shape.top_k, shape.total_tokens)

    def commit(self, verdict: Verdict, scored: TargetOutput) -> None:
        """Nothing to record: the target's commit keeps the accepted KV the next draft runs over."""

    def parameter_count(self) -> int:
        return 0


def _with_alternatives(root: int, chain: tuple[int, ...], logits: torch.Tensor, top_k: int,
                       total_tokens: int) -> DraftTree:  # logits [K, V]
    """The greedy chain plus each level's top_k − 1 runners-up as leaves, reranked to total_tokens nodes."""
    logprobs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # [K, V]
    # Candidates level by level: chain node first, then its alternatives (all children of the
    # previous chain node). Each: (token, parent candidate index or -1, cumulative score, own log-prob).
    cands: list[tuple[int, int, float, float]] = []
    parent, parent_score = -1, 0.0
    for level, token in enumerate(chain):
        row = logprobs[level]
        picks = [t for t in row.topk(min(top_k + 1, row.numel())).indices.tolist() if t != token][: top_k - 1]
        chain_index = len(cands)
        for t in (token, *picks):
            own = float(row[t])
            cands.append((t, parent, parent_score + own, own))
        parent, parent_score = chain_index, cands[chain_index][2]
    order = sorted(range(len(cands)), key=lambda i: (-cands[i][2], i))  # ties: the earlier candidate
    chosen = sorted(order[: total_tokens - 1])
    node = {c: j + 1 for j, c in enumerate(chosen)}  # candidate index -> tree node index
    parents = []
    for c in chosen:
        p = cands[c][1]
        if p >= 0 and p not in node:
            raise AssertionError("early-exit rerank chose a candidate without its parent")
        parents.append(0 if p < 0 else node[p])
    return DraftTree(tokens=(root, *(cands[c][0] for c in chosen)), parents=(-1, *parents),
                     forwards=len(chain), draft_logprobs=(0.0, *(cands[c][3] for c in chosen)))


def build_early_exit(target: Target, settings: DrafterSettings) -> EarlyExitDrafter:
    layers = parse_layers(settings.checkpoint, target.num_layers)
    try:
        target.early_exit_check()
    except TargetError as err:
        raise DrafterError(str(err)) from None
    return EarlyExitDrafter(target, settings, layers)
