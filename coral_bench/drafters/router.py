"""CORAL's LM-head router (docs/methods.md §6): Linear(H→h)·SiLU·Linear(h→N) over a drafter output
feature, scoring the N groups of a :class:`~coral_bench.drafters.vocab_grouping.VocabGrouping`; and
its checkpoint form — the tensors beside the EAGLE keys and the config's ``coral_bench.router``
section. How the scores are used: :mod:`coral_bench.drafters.draft_heads`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from coral_bench.core.drafter import DrafterError
from .vocab_grouping import COUNTS_KEY, G2T_KEY, STARTS_KEY, VocabGrouping

SCORES = ("renorm", "calibrated")
ROUTER_WIDTH = 256  # h, docs/methods.md §6 default
ROUTER_FORMAT = 1
PREFIX = "router."  # checkpoint keys of the router module and the grouping


class Router(nn.Module):
    """Linear(H → h) · SiLU · Linear(h → N): group logits from a drafter output feature."""

    def __init__(self, hidden: int, groups: int, width: int = ROUTER_WIDTH):
        super().__init__()
        self.proj = nn.Linear(hidden, width)
        self.out = nn.Linear(width, groups)

    @property
    def groups(self) -> int:
        return self.out.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., N]
        return self.out(F.silu(self.proj(x)))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v.detach() for k, v in self.state_dict().items()}


def router_shapes(hidden: int, groups: int, width: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor of a routed drafter beyond the EAGLE keys (key → shape)."""
    return {"router.proj.weight": (width, hidden), "router.proj.bias": (width,),
            "router.out.weight": (groups, width), "router.out.bias": (groups,),
            G2T_KEY: (vocab,), STARTS_KEY: (groups + 1,)}


def router_description(grouping: VocabGrouping, router: Router, k: int, score: str,
                       layout_copy: bool, **more: Any) -> dict[str, Any]:
    """The config's ``coral_bench.router`` section: what the router tensors are and how they are used."""
    return {
        "format": ROUTER_FORMAT,
        "architecture": "Linear(H->h) . SiLU . Linear(h->N)",
        "groups": router.groups, "k": k, "width": router.proj.out_features,
        "hidden_size": router.proj.in_features, "vocab_size": grouping.vocab_size,
        "partition": grouping.describe(),
        "score": score,
        "head_layout": ("views of the target's LM head (contiguous id ranges, no copy)" if not layout_copy else
                        "one copy of the LM head in group order (V x H elements), made when the drafter loads"),
        "tensors": {"router.proj.*, router.out.*": "the router", G2T_KEY: "[V] token ids, group by group",
                    STARTS_KEY: "[N+1] group g = g2t[starts[g]:starts[g+1]]",
                    COUNTS_KEY: "[V] loss-token counts of the training data (frequency ranking, @vocab=V)"},
        **more,
    }


def router_problems(section: Any, tensors: Mapping[str, torch.Tensor], vocab: int, hidden: int) -> list[str]:
    """What is wrong with a checkpoint's router (description + tensors) for a target of this size."""
    if not isinstance(section, dict):
        return ["the coral_bench.router section is not an object"]
    try:
        groups, width = int(section["groups"]), int(section["width"])
        k = int(section["k"])
    except (KeyError, TypeError, ValueError) as err:
        return [f"the coral_bench.router section lacks or garbles {err}"]
    problems = []
    if section.get("format", ROUTER_FORMAT) > ROUTER_FORMAT:
        problems.append(f"router format {section['format']} is newer than this coral-bench ({ROUTER_FORMAT})")
    if section.get("vocab_size", vocab) != vocab:
        problems.append(f"the router was built for a vocabulary of {section['vocab_size']}, the target has {vocab}")
    if section.get("hidden_size", hidden) != hidden:
        problems.append(f"the router reads features of size {section['hidden_size']}, the target's are {hidden}")
    if not 1 <= k <= groups:
        problems.append(f"router k {k} must be in 1…{groups}")
    expected = router_shapes(hidden, groups, width, vocab)
    missing = [key for key in expected if key not in tensors]
    misshaped = [f"{key} {tuple(tensors[key].shape)} (expected {shape})" for key, shape in expected.items()
                 if key in tensors and tuple(tensors[key].shape) != shape]
    unexpected = sorted(key for key in tensors if key.startswith(PREFIX) and key not in expected)
    if missing:
        problems.append(f"missing router keys {missing}")
    if misshaped:
        problems.append(f"mis-shaped router keys {misshaped} (a router for another target's vocabulary or hidden size?)")
    if unexpected:
        problems.append(f"unexpected router keys {unexpected}")
    if not (missing or misshaped):
        try:
            grouping_from(section, tensors)
        except DrafterError as err:
            problems.append(str(err))
    return problems


def grouping_from(section: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> VocabGrouping:
    part = section.get("partition") or {}
    rule = part.get("rule", "contiguous") if isinstance(part, dict) else str(part)
    details = {k: v for k, v in part.items() if k not in ("rule", "groups", "vocab_size", "min_group_size",
                                                         "max_group_size")} if isinstance(part, dict) else {}
    return VocabGrouping(rule, tensors[G2T_KEY].long(), tuple(int(s) for s in tensors[STARTS_KEY].tolist()), details)


def router_from(section: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Router:
    """The router module of a validated checkpoint (CPU, in the dtype it was saved in)."""
    keys = ("router.proj.weight", "router.proj.bias", "router.out.weight", "router.out.bias")
    router = Router(int(section["hidden_size"]), int(section["groups"]), int(section["width"]))
    router = router.to(tensors[keys[0]].dtype)
    router.load_state_dict({k.removeprefix(PREFIX): tensors[k] for k in keys})
    return router
