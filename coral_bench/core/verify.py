"""Lossless verification of a draft tree against the target's logits (docs/methods.md §4).

Pure functions of ``(tree, logits, sampling, generator)``; row i of ``logits`` is the target's
next-token logits after node i (the distribution of node i's children). No model here.
"""

from __future__ import annotations

import torch

from coral_bench.core.sampling import SamplingConfig, sample, warp
from coral_bench.core.tree import DraftTree, Verdict

# Residual mass at or below this is treated as empty: only reachable through rounding, since a
# child that holds all the remaining mass is accepted with probability 1.
_MIN_RESIDUAL = 1e-30


def greedy(tree: DraftTree, logits: torch.Tensor) -> Verdict:  # logits [N, V]
    """T = 0: follow the child that equals the target argmax; emit it plus the argmax after it."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # exact upcast, same argmax; bf16 argmax is ~3x slower on CPU
    best = logits.argmax(dim=-1).tolist()  # [N] one call, then plain Python (hot loop)
    tokens, children = tree.tokens, tree.children
    node, path, out = 0, [0], []
    while True:
        want = best[node]
        for child in children[node]:
            if tokens[child] == want:
                break
        else:
            out.append(want)  # bonus: the target's own token after the last accepted node
            return Verdict(path=tuple(path), tokens=tuple(out))
        path.append(child)
        out.append(want)
        node = child


def rejection(tree: DraftTree, logits: torch.Tensor, cfg: SamplingConfig,
              generator: torch.Generator) -> Verdict:  # logits [N, V]
    """T > 0: multi-candidate speculative sampling with deterministic (point-mass) children.

    At each node p = warp(logits[node]) once; children are tried in order and child x is accepted
    with probability p(x) / (residual mass), after which x is removed from the residual (SpecInfer's
    multi-step rule; with q = δ_x this is Leviathan et al. 2023 / Chen et al. 2023 speculative
    sampling). If every child is rejected the bonus is sampled from the residual. The emitted
    tokens are distributed exactly as sampling the target token by token. ``generator`` must live
    on the device of ``logits``.
    """
    tokens, children = tree.tokens, tree.children
    node, path, out = 0, [0], []
    while True:
        p = warp(logits[node], cfg)  # [V] warped once; top-p is never re-applied to the residual
        kids = children[node]
        if not kids:
            out.append(sample(p, generator))
            return Verdict(path=tuple(path), tokens=tuple(out))
        residual = p.clone()
        mass = float(residual.sum())
        accepted = -1
        for child in kids:
            x = tokens[child]
            px = float(residual[x])
            if px > 0.0:
                # Accept with p_res(x) = p(x) / mass: renormalising after each rejection is what
                # makes the walk reach child x with probability exactly p(x).
                u = float(torch.rand((), generator=generator, device=generator.device))
                if u * mass < px:
                    accepted = child
                    break
                residual[x] = 0.0
                mass = float(residual.sum())  # exact sum of what is left, no drift from subtraction
        if accepted < 0:
            # All children rejected: the bonus comes from p with the children removed.
            out.append(sample(residual if mass > _MIN_RESIDUAL else p, generator))
            return Verdict(path=tuple(path), tokens=tuple(out))
        path.append(accepted)
        out.append(tokens[accepted])
        node = accepted


def verify(tree: DraftTree, logits: torch.Tensor, cfg: SamplingConfig,
           generator: torch.Generator | None = None) -> Verdict:  # logits [N, V]
    """Greedy verification at temperature 0, rejection sampling otherwise."""
    if cfg.is_greedy:
        return greedy(tree, logits)
    if generator is None:
        raise ValueError("sampling verification (temperature > 0) needs a torch.Generator")
    return rejection(tree, logits, cfg, generator)


def expected_accepted(tree: DraftTree, logits: torch.Tensor, cfg: SamplingConfig) -> float:  # logits [N, V]
    """Exact E[accepted draft tokens] for this tree (docs/methods.md §4).

    The rejection walk moves from a node to its child x with probability p(x) under the parent's
    warped, *unrenormalised* p, so E[accepted] = Σ_{v ≠ root} Π_{u on path(v), u ≠ root}
    p_parent(u)(token u). At temperature 0 it is the deterministic greedy count.
    """
    if cfg.is_greedy:
        return float(greedy(tree, logits).accepted)
    if tree.size == 1:
        return 0.0
    inner = [i for i in range(tree.size) if tree.children[i]]
    probs = warp(logits[inner], cfg)  # [len(inner), V] only rows that have children
    row_of = {node: r for r, node in enumerate(inner)}
    rows = torch.tensor([row_of[tree.parents[v]] for v in range(1, tree.size)], device=probs.device)
    cols = torch.tensor(tree.tokens[1:], device=probs.device)
    step = probs[rows, cols].double().tolist()  # [N-1] p_parent(v)(token v)
    reach = [1.0] + [0.0] * (tree.size - 1)  # probability the walk reaches each node
    for v in range(1, tree.size):  # topological order: parents first
        reach[v] = reach[tree.parents[v]] * step[v - 1]
    return float(sum(reach[1:]))
