"""The no-op decode loop of the profile pass: per-cycle costs outside model forwards (docs/methods.md §7).

Besides its forwards, a decoding cycle spends time on drafting bookkeeping (top-k, rerank, tree building,
prompt-lookup's n-gram matching, an oracle's lookup), verification, the commit (target cache compaction +
drafter commit) and the loop's own Python between the timed stages. The cost model takes these as terms of
their own (``speedup.LoopCosts``: tree_s, verify_s, commit_s, loop_s; the target call's mask, positions and
cache append, score_call_s, lie inside T_V and are shown only), measured apart from the forwards that
``forwards`` times by region, and never as a residual of the run they predict.

So ``noop_loop`` runs the real ``decode.generate``, ``Target`` (mask, commit over a cache of the real shape:
the stand-in backbone appends zero keys / values for each layer) and drafter code, with the networks
replaced by stand-ins that return precomputed outputs: the loop does all of its own work while its forwards
cost next to nothing. An EAGLE-style drafter's log-softmax + top-k run over a small vocabulary here, since
the profile times them as T_sm and they must not count twice; oracles read a constant greedy line (untimed,
as in a run), early exit builds its tree around precomputed drafts, model-free drafters run as they are.

The stand-in target is scripted so that each cycle accepts the planned L_c (``NoopPlan``: a run's samples,
or synthetic plans without a run) along the tree's deepest branch: loop costs are measured at the run's mix
of accepted lengths.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from coral_bench.core.clock import Clock
from coral_bench.core.decode import generate
from coral_bench.core.drafter import Drafter, DrafterSettings, generator_for
from coral_bench.drafters.eagle import EagleDrafter, EagleInfo
from coral_bench.drafters.early_exit import EarlyExitDrafter, parse_layers
from coral_bench.drafters.eagle_model import EagleOutput, KVBlock
from coral_bench.drafters.registry import DRAFTERS, EAGLE, EARLY_EXIT, ORACLE, build_drafter
from coral_bench.costmodel.forwards import tree_k
from coral_bench.costmodel.terms import EarlyExitView, constant_reference
from coral_bench.core.records import SampleRecord
from coral_bench.core.sampling import SamplingConfig
from coral_bench.costmodel.speedup import LoopCosts
from coral_bench.core.target import Target
from coral_bench.core.tree import TreeShape


@dataclass(frozen=True)
class NoopPlan:
    """One sample for the no-op loop: its prompt length, new tokens and accepted count per cycle."""

    prompt_tokens: int
    new_tokens: int
    accepted: tuple[int, ...]  # [cycles] L_c to reproduce (cycled; 0 once exhausted)


class _Script:
    """Decides which token each scored row predicts, so that each cycle accepts the planned L_c along the
    tree's deepest branch (best-ranked among equals), and the bonus is never a child or an EOS."""

    def __init__(self, eos: Sequence[int], avoid_below: int):
        self._eos = set(eos)
        self._low = avoid_below  # drafted ids of the no-op EAGLE view lie below this
        self._plan: list[int] = []

    def start(self, accepted: Sequence[int]) -> None:
        self._plan = list(reversed(accepted))

    def filler(self, taken: set[int]) -> int:
        token = self._low
        while token in taken or token in self._eos:
            token += 1
        return token

    def wanted(self, ids: torch.Tensor, mask: torch.Tensor | None, prefill: bool) -> list[int]:  # ids [n]
        n = ids.shape[0]
        if prefill or n == 1:
            if not prefill and self._plan:
                self._plan.pop()
            return [self.filler(set())] * n
        children = _children_from_mask(mask, n)
        tokens = ids.tolist()
        want = [self.filler(set())] * n
        height = _heights(children)
        node, left = 0, self._plan.pop() if self._plan else 0
        while left > 0 and children[node]:
            child = max(children[node], key=lambda c: (height[c], -c))  # the deepest branch, then the best-ranked
            want[node], node, left = tokens[child], child, left - 1
        want[node] = self.filler({tokens[c] for c in children[node]})
        return want


def _children_from_mask(mask: torch.Tensor | None, n: int) -> list[list[int]]:
    """Children lists of a tree from ``Target``'s additive mask [1, 1, n, P + n] (parent = deepest
    ancestor); no mask: ``Target`` scores chains through the plain causal path."""
    if mask is None:
        return [[i + 1] for i in range(n - 1)] + [[]]
    allowed = (mask[0, 0, :, -n:] == 0).cpu()
    idx = torch.arange(n)
    parents = torch.where(allowed & (idx[None, :] < idx[:, None]), idx[None, :], -1).max(dim=1).values.tolist()
    children: list[list[int]] = [[] for _ in range(n)]
    for i, p in enumerate(parents[1:], start=1):
        children[p].append(i)
    return children


def _heights(children: list[list[int]]) -> list[int]:
    """Levels below each node (children follow their parents, so one reverse pass suffices)."""
    height = [0] * len(children)
    for node in range(len(children) - 1, -1, -1):
        height[node] = 1 + max((height[c] for c in children[node]), default=-1)
    return height


@dataclass(frozen=True)
class _NoopOutput:
    last_hidden_state: torch.Tensor  # [1, n, 1] float32: the token each row must predict


class _NoopBackbone(nn.Module):
    """Stands in for the HF decoder: appends zero keys/values of the real shapes to the cache (so commits
    move real bytes; the one use of the cache API outside target.py, as the HF layers make it) and returns,
    as its "features", the token each row must predict."""

    def __init__(self, config: Any, dtype: torch.dtype, device: torch.device, script: _Script):
        super().__init__()
        self._layers = int(config.num_hidden_layers)
        heads = int(config.num_attention_heads)
        self._kv = (int(getattr(config, "num_key_value_heads", None) or heads),
                    int(getattr(config, "head_dim", None) or config.hidden_size // heads))
        self._dtype, self._device, self._script = dtype, device, script

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, **_):
        n = input_ids.shape[1]
        prefill = cache.get_seq_length() == 0
        zeros = torch.zeros(1, self._kv[0], n, self._kv[1], dtype=self._dtype, device=self._device)
        for layer in range(self._layers):
            cache.update(zeros, zeros, layer)
        want = self._script.wanted(input_ids[0], attention_mask, prefill)
        return _NoopOutput(torch.tensor(want, dtype=torch.float32, device=self._device).view(1, n, 1))


class _NoopHead(nn.Module):
    """Precomputed logits [rows, V] (float32, like a real head's after the cast) with each row's wanted token on top."""

    def __init__(self, vocab: int, rows: int, device: torch.device, gen: torch.Generator):
        super().__init__()
        self.weight = torch.empty(vocab, 1, device="meta")  # Target.vocab_size reads its shape
        self._base = torch.rand(rows, vocab, generator=gen).to(device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # [..., R, 1] -> [..., R, V]
        rows = features.shape[-2]
        base = self._base[:rows] if rows <= self._base.shape[0] else self._base[:1].expand(rows, -1)
        return base.clone().scatter_(-1, features.long(), 2.0)


class _NoopLM(nn.Module):
    """An HF-causal-LM look-alike for ``Target``: real config, cache and masks; no network."""

    def __init__(self, config: Any, dtype: torch.dtype, device: torch.device, script: _Script, rows: int,
                 gen: torch.Generator):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.config._attn_implementation = "sdpa"
        self.model = _NoopBackbone(self.config, dtype, device, script)
        self.lm_head = _NoopHead(int(config.vocab_size), rows, device, gen)
        self._dtype, self._device = dtype, device

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


class _NoopEagleModel(nn.Module):
    """Stands in for ``EagleModel``: appends one-number slots to the drafter cache, returns zero features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)  # EagleDrafter reads fc.weight.dtype

    def forward(self, emb, feat, positions, past=None, attn_mask=None, cache=None, last_only=False) -> EagleOutput:
        s = emb.shape[1]
        block = KVBlock(emb.new_zeros(1, 1, s, 1), emb.new_zeros(1, 1, s, 1))
        if cache is not None:
            cache.append(block)
        return EagleOutput(hidden=emb.new_zeros(1, 1 if last_only else s, 1), kv=block)


class _DrafterView:
    """What ``EagleDrafter`` asks of its target, answered from a precomputed table over a small vocabulary
    (so log-softmax + top-k, timed in the profile as T_sm, cost nearly nothing here and are not counted twice)."""

    def __init__(self, vocab: int, rows: int, eos: Sequence[int], device: torch.device, gen: torch.Generator):
        # Peaked like a trained drafter's (each rank 2 nats below the last), so the tree reaches full depth.
        ranks = torch.stack([torch.randperm(vocab, generator=gen) for _ in range(rows)]).float()
        table = -2.0 * ranks + 0.1 * torch.rand(rows, vocab, generator=gen)
        table[:, [e for e in eos if e < vocab]] = float("-inf")  # never draft an EOS: the loop must run on
        self._table = table.to(device)
        self.vocab_size, self.device, self.dtype = vocab, device, torch.float32

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, 1, device=self.device)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:  # [R, 1] -> [R, V]
        return self._table[: features.shape[0]]


def _noop_drafter(name: str, settings: DrafterSettings, eos: Sequence[int], device: torch.device,
                  gen: torch.Generator, info: EagleInfo | None, target: Target | None = None) -> Drafter:
    kind = DRAFTERS[name].kind
    if kind == EAGLE:
        k = tree_k(settings.tree, 10**9)
        view = _DrafterView(max(64, 4 * k + len(eos)), max(k, 1), eos, device, gen)
        return EagleDrafter(view, _NoopEagleModel(), settings, info)  # type: ignore[arg-type]
    if kind == ORACLE:  # the real oracle code over the no-op target (its vocabulary and EOS)
        return build_drafter(target, settings)  # type: ignore[arg-type]
    if kind == EARLY_EXIT:  # the real drafter (tree building, rerank) around precomputed drafts
        config = target.model.config  # type: ignore[union-attr]
        layers = parse_layers(settings.checkpoint, int(config.num_hidden_layers))
        view = EarlyExitView(int(config.vocab_size), settings.tree.levels, eos, device, gen)
        return EarlyExitDrafter(view, settings, layers)  # type: ignore[arg-type]
    return build_drafter(None, settings)  # type: ignore[arg-type]  # vanilla, prompt-lookup: no target needed


def noop_loop(config: Any, dtype: torch.dtype, device: torch.device, name: str, tree: TreeShape,
              plans: Sequence[NoopPlan], clock: Clock, max_cycles: int, seed: int = 0,
              info: EagleInfo | None = None, checkpoint: str | None = None) -> LoopCosts:
    """Per-cycle costs outside model forwards: the real decode loop, ``Target`` and drafter code around
    stand-in networks that return precomputed outputs (docs/methods.md §7), replaying ``plans``. Oracles read a
    constant greedy line (untimed, as in a run); ``checkpoint`` carries early-exit's layer count."""
    kind = DRAFTERS[name].kind
    gen = torch.Generator().manual_seed(seed)
    eos = eos_ids(config)
    low = max(64, 4 * tree.top_k + len(eos))
    script = _Script(eos, low)
    target = Target(_NoopLM(config, dtype, device, script, tree.max_nodes + 1, gen), eos, name="no-op")
    settings = DrafterSettings(name=name, tree=tree, checkpoint=checkpoint if kind == EARLY_EXIT else None)
    drafter = _noop_drafter(name, settings, eos, device, gen, info, target)
    reference = constant_reference(script.filler(set())) if DRAFTERS[name].needs_reference else None
    vocab = int(config.vocab_size)
    sums, cycles, decode = defaultdict(float), 0, 0.0
    for i, plan in enumerate([plans[0], *plans]):  # the first is a warm-up
        prompt = torch.randint(low, vocab, (plan.prompt_tokens,), generator=gen)
        prompt = [t for t in prompt.tolist() if t not in eos] or [low]
        script.start(plan.accepted)
        out = generate(target, drafter, prompt, plan.new_tokens, SamplingConfig(), generator_for(seed), clock,
                       reserve=tree.max_nodes, reference=reference)
        if i == 0:
            continue
        for c in out.cycles:
            for k in ("draft_s", "score_s", "verify_s", "commit_s"):
                sums[k] += getattr(c, k)
        cycles += len(out.cycles)
        decode += out.wall_s - out.prefill_s
        if cycles >= max_cycles:
            break
    n = max(cycles, 1)
    stages = sums["draft_s"] + sums["score_s"] + sums["verify_s"] + sums["commit_s"]
    return LoopCosts(sums["draft_s"] / n, sums["verify_s"] / n, sums["commit_s"] / n, (decode - stages) / n,
                     sums["score_s"] / n, cycles)


def eos_ids(config: Any) -> tuple[int, ...]:
    eos = getattr(config, "eos_token_id", None)
    eos = eos if isinstance(eos, (list, tuple)) else (eos,)
    return tuple(int(e) for e in eos if e is not None) or (2,)


def synthetic_plans(tree: TreeShape, prompt_tokens: int, new_tokens: int, samples: int = 8) -> list[NoopPlan]:
    """Plans without a run: L_c = c mod (levels + 1), so every accepted length occurs."""
    cycles = max(1, new_tokens)
    accepted = tuple(c % (tree.levels + 1) for c in range(cycles))
    return [NoopPlan(prompt_tokens, new_tokens, accepted)] * samples


def plans_from_samples(samples: Sequence[SampleRecord]) -> list[NoopPlan]:
    return [NoopPlan(s.prompt_tokens, s.new_tokens, tuple(s.accepted)) for s in samples if s.cycles]
