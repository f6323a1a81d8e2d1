"""The numerical noise of tree scoring, measured: how far it moves vanilla's top-2 logit margin.

Greedy speculative decoding is exact in real arithmetic; in floating point a tree forward (N rows,
a mask, a KV cache built from multi-token commits) rounds differently from vanilla's one-row steps,
and where vanilla's top-2 margin is smaller than that rounding the argmax can flip. This module
measures the rounding for one target, dtype and tree shape, before the runs it judges
(docs/methods.md §4):

1. **Step pass.** Vanilla decodes ``tokens`` greedy tokens after each calibration prompt, one row
   per forward; at each position it records its top-2 tokens (a, b) and margin m = l_a − l_b.
2. **Tree pass.** The same token sequence is scored again the way a speculative decode scores it:
   cycles that commit k + 1 tokens (k drawn from 0…depth), each inside an N-node tree whose other
   nodes are random distractors (placed among the path's siblings, or after it for chains).
3. **Noise.** At every position |(l_a − l_b)_tree − m|. The bound is a high quantile of these.

A greedy divergence whose vanilla margin is within the bound is *numerical*; above it, *divergent*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from coral_bench.core.target import Target
from coral_bench.core.tree import DraftTree, TreeShape

QUANTILE = 0.999  # of |Δ margin| over every calibration position
CALIBRATION_TOKENS = 64  # greedy tokens per calibration prompt
CALIBRATION_PROMPTS = 4  # the first turn-0 prompts of the suite
PEER_CHAIN_NODES = 11  # transformers' assisted generation verifies up to 10 candidates in one causal forward


@dataclass(frozen=True)
class NoiseShape:
    """What is calibrated: N scored nodes, as a chain (the plain causal path) or a masked tree."""

    nodes: int
    chain: bool
    depth: int  # the most tokens a cycle accepts

    @classmethod
    def of(cls, tree: TreeShape | None) -> "NoiseShape":
        """A method's shape; None (peers) is a chain of :data:`PEER_CHAIN_NODES`."""
        if tree is None:
            return cls(PEER_CHAIN_NODES, True, PEER_CHAIN_NODES - 1)
        return cls(tree.max_nodes, tree.kind == "chain", min(tree.levels, tree.max_nodes - 1))

    @property
    def key(self) -> str:
        return f"{'chain' if self.chain else 'tree'}:{self.nodes}"


@dataclass(frozen=True)
class NoiseBound:
    """The measured margin noise of one shape (docs/methods.md §4); ``value`` is the bound."""

    value: float  # the QUANTILE of |Δ margin|
    quantile: float
    positions: int  # calibration positions measured
    median: float
    maximum: float
    shape: str  # NoiseShape.key
    dtype: str
    prompts: int
    tokens: int  # per prompt
    method: str = ("|(l_a - l_b) tree - (l_a - l_b) step| at vanilla's top-2 tokens (a, b), the same greedy tokens "
                   "scored one row per forward and in N-node trees committing 1..depth+1 tokens per cycle")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "NoiseBound":
        return cls(**data)


@torch.inference_mode()
def measure_noise_bounds(target: Target, prompts: Sequence[Sequence[int]], shapes: Sequence[NoiseShape],
                         tokens: int = CALIBRATION_TOKENS, quantile: float = QUANTILE,
                         seed: int = 0) -> dict[str, NoiseBound]:
    """Measure :class:`NoiseBound` for each of ``shapes`` on ``target`` over ``prompts`` (module
    docstring), by shape key; vanilla's step pass runs once per prompt for all shapes."""
    if not prompts:
        raise ValueError("noise calibration needs at least one prompt")
    steps = [(list(prompt), *_step_pass(target, list(prompt), tokens)) for prompt in prompts]
    bounds = {}
    for shape in shapes:
        rng = torch.Generator().manual_seed(seed)
        noise = [d for prompt, seq, top2, margins in steps for d in _tree_pass(target, prompt, seq, top2, margins,
                                                                               shape, rng)]
        if not noise:
            raise ValueError("noise calibration measured no position (every prompt stopped at once)")
        values = torch.tensor(noise, dtype=torch.float64)
        bounds[shape.key] = NoiseBound(
            value=float(values.quantile(quantile)), quantile=quantile, positions=len(noise),
            median=float(values.median()), maximum=float(values.max()), shape=shape.key,
            dtype=str(target.dtype).removeprefix("torch."), prompts=len(prompts), tokens=tokens)
    return bounds


def _step_pass(target: Target, prompt: list[int], tokens: int):
    """Vanilla's greedy tokens t_0…, and at each position j ≥ 1 its top-2 (a, b) and margin."""
    room = min(tokens, target.max_context - len(prompt) - 1)
    logits = target.prefill(torch.tensor(prompt, dtype=torch.long)).logits[0]
    seq = [int(logits.argmax())]
    top2: list[tuple[int, int]] = []
    margins: list[float] = []
    eos = set(target.eos_token_ids)
    while len(seq) < room and seq[-1] not in eos:
        logits = target.score(DraftTree.root_only(seq[-1])).logits[0]
        target.commit((0,))
        values, ids = logits.topk(2)
        top2.append((int(ids[0]), int(ids[1])))
        margins.append(float(values[0] - values[1]))
        seq.append(int(ids[0]))
    return seq, top2, margins


def _tree_pass(target: Target, prompt: list[int], seq: list[int], top2, margins, shape: NoiseShape,
               rng: torch.Generator) -> list[float]:
    """Score ``seq`` again in ``shape``-sized trees; |Δ margin| at every position the step pass measured."""
    target.prefill(torch.tensor(prompt, dtype=torch.long))
    out: list[float] = []
    j = 1  # next position to predict; its root is seq[j - 1]
    while j < len(seq):
        k = int(torch.randint(0, min(shape.depth, len(seq) - 1 - j) + 1, (), generator=rng))
        tree, path = _calibration_tree(seq[j - 1:j + k], shape, target.vocab_size, rng)
        logits = target.score(tree).logits
        for i, node in enumerate(path):  # row of path node i predicts seq[j + i]
            a, b = top2[j + i - 1]
            out.append(abs(float(logits[node, a] - logits[node, b]) - margins[j + i - 1]))
        target.commit(path)
        j += k + 1
    return out


def _calibration_tree(line: list[int], shape: NoiseShape, vocab: int, rng: torch.Generator):
    """An N-node tree holding ``line`` (root first) as one path, plus random distractor nodes.

    Chains put the distractors after the line (a causal forward: they cannot affect its rows); trees
    hang each distractor under a random node of the line and order nodes by depth, the path's node at
    a random place among its level, as EAGLE-2 trees store them. Returns the tree and the path's node
    indices."""
    extra = max(0, shape.nodes - len(line))
    if shape.chain:
        distractors = torch.randint(0, vocab, (extra,), generator=rng).tolist()
        return DraftTree.chain(line[0], [*line[1:], *distractors]), tuple(range(len(line)))
    # nodes as (depth, sort key, token, parent's line index or -1 for line nodes)
    nodes = [(d, float(torch.rand((), generator=rng)), tok, -1, d) for d, tok in enumerate(line)]
    for _ in range(extra):
        parent = int(torch.randint(0, len(line), (), generator=rng))
        tok = int(torch.randint(0, vocab, (), generator=rng))
        nodes.append((parent + 1, float(torch.rand((), generator=rng)), tok, parent, -1))
    nodes[0] = (0, -1.0, line[0], -1, 0)  # the root first
    order = sorted(range(len(nodes)), key=lambda n: (nodes[n][0], nodes[n][1]))
    index = {n: i for i, n in enumerate(order)}
    line_node = {nodes[n][4]: index[n] for n in order if nodes[n][4] >= 0}  # line position → node index
    def parent_of(n: int) -> int:
        _, _, _, parent, at = nodes[n]
        return -1 if at == 0 else line_node[at - 1] if at > 0 else line_node[parent]

    seen = {(parent_of(n), nodes[n][2]) for n in order if nodes[n][4] >= 0}  # the line's own nodes
    tokens, parents = [], []
    for n in order:
        par, tok = parent_of(n), nodes[n][2]
        if nodes[n][4] < 0:
            while (par, tok) in seen:  # siblings carry distinct tokens; the line's are never changed
                tok = (tok + 1) % vocab
            seen.add((par, tok))
        tokens.append(tok)
        parents.append(par)
    path = tuple(line_node[i] for i in range(len(line)))
    return DraftTree(tokens=tuple(tokens), parents=tuple(parents)), path
