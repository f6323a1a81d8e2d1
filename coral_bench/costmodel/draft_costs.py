"""Drafting-cost terms beyond the EAGLE-style forward (docs/methods.md §6–7): early exit and cheaper draft heads.

Pure maths, no torch; the terms are measured in the profile pass (``terms``), never fitted on
the run they predict.

- :class:`EarlyExitCosts` — ``early-exit:N`` drafts K = tree levels tokens, each one a one-token
  forward through the target's first N layers, its final norm and LM head::

      T_draft = K · [T_embed+norm(ctx) + Σ_{i<N} T_layer_i(1 row, ctx) + T_head(1) + T_glue(ctx)]

  T_layer_i, T_embed+norm and T_head are the target's per-region latencies of a one-row forward;
  T_glue is what the early-exit step spends outside those modules (RoPE table, fp32 cast, argmax,
  cache crop), measured on ``Target.early_exit_chain`` itself. The verification forward is T_V as usual.

- :class:`HeadRowCosts` — a routed head (``coral-router``) or a frequency subset (``@vocab=V``) computes
  fewer LM-head rows per drafter forward: U = |∪ selected groups| · V/N rows (recorded per forward in
  ``cycles.jsonl`` as ``head_union``), or U = V_sub always. docs/methods.md §7:
  T_head(w) → T_router(w) + T_matmul(U rows, w) (+ T_sm(U, w): finish, log-sum-exp and top-k over U columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from coral_bench.costmodel.curves import Curve, Grid, curve, curve_json


@dataclass(frozen=True)
class EarlyExitCosts:
    """Per-step costs of ``early-exit:N`` (module doc), each a curve over the context length."""

    layers: tuple[Curve, ...]  # [num_layers] T_layer_i(ctx), one row
    embed_norm: Curve  # T_embedding + T_norm, one row
    head: Curve  # T_head(1): the target's LM-head matmul, one row
    glue: Curve  # per step outside the modules above (measured on Target.early_exit_chain)
    exit_layers: int  # N
    steps: int  # K: sequential one-token forwards per cycle (tree levels)

    def __post_init__(self) -> None:
        if not 1 <= self.exit_layers <= len(self.layers) or self.steps < 1:
            raise ValueError(f"early exit after {self.exit_layers} of {len(self.layers)} layers, {self.steps} steps: "
                             "need 1 <= N <= layers and steps >= 1")

    def step(self, context: float) -> tuple[float, float]:
        """(body, head) seconds of one draft step at ``context``: body = embedding, N layers, norm and glue."""
        body = self.embed_norm.at(context) + sum(c.at(context) for c in self.layers[: self.exit_layers])
        return body + self.glue.at(context), self.head.at(context)

    def cycle(self, context: float) -> tuple[float, float]:
        """(body, head) of one cycle's K steps; steps run at ctx … ctx + K − 1, taken at their mean."""
        body, head = self.step(context + (self.steps - 1) / 2)
        return self.steps * body, self.steps * head

    def to_json(self) -> dict:
        return {"layers": [curve_json(c, "context") for c in self.layers],
                "embed_norm": curve_json(self.embed_norm, "context"), "head": curve_json(self.head, "context"),
                "glue": curve_json(self.glue, "context"), "exit_layers": self.exit_layers, "steps": self.steps}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "EarlyExitCosts":
        return cls(tuple(curve(c, "context") for c in data["layers"]), curve(data["embed_norm"], "context"),
                   curve(data["head"], "context"), curve(data["glue"], "context"), int(data["exit_layers"]),
                   int(data["steps"]))


HEAD_KINDS = ("routed", "frequency-subset")


@dataclass(frozen=True)
class HeadRowCosts:
    """A draft head that computes U of the V LM-head rows per forward (module doc).

    The grids are indexed (head rows U, feature rows w): ``Grid.rows`` holds U, ``Grid.contexts`` holds w.
    """

    kind: str  # "routed" or "frequency-subset"
    rows_per_union: float  # V/N head rows per selected group (routed); V_sub (subset: U never varies)
    groups: int  # N (1 for a subset)
    k: int  # groups each feature row selects (1 for a subset)
    router: Curve | None  # T_router(w): the router forward + group selection; None for a subset
    matmul: Grid  # T_matmul(U, w): the LM-head rows' matmul
    softmax_topk: Grid  # T_sm(U, w): finish (fp32, scaling), log-sum-exp and top-k over U columns

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {HEAD_KINDS}, not {self.kind!r}")
        if (self.router is None) != (self.kind != "routed"):
            raise ValueError("a routed head needs its router's curve, a subset head has none")

    def head_rows(self, width: int, union: int | None) -> float:
        """U for one forward over ``width`` feature rows. ``union``: the recorded |∪ selected groups|; where
        none was recorded (runs before head_union), a routed head is costed at its most, min(N, w·k)."""
        if self.kind != "routed":
            return self.rows_per_union
        groups = union if union is not None else min(self.groups, width * self.k)
        return groups * self.rows_per_union

    def forward(self, width: int, union: int | None) -> tuple[float, float]:
        """(head, softmax_topk) seconds of one drafter forward: head = router + matmul over U rows."""
        rows = self.head_rows(width, union)
        router = self.router.at(width) if self.router is not None else 0.0
        return router + self.matmul.at(rows, width), self.softmax_topk.at(rows, width)

    def cycle(self, widths: Sequence[int], unions: Sequence[int]) -> tuple[float, float]:
        """(head, softmax_topk) over a cycle's forwards of ``widths`` feature rows; ``unions`` as recorded
        (one per forward, in order; fewer or none: the rest are costed as in ``head_rows``)."""
        head = sm = 0.0
        for i, w in enumerate(widths):
            h, s = self.forward(w, unions[i] if i < len(unions) else None)
            head, sm = head + h, sm + s
        return head, sm

    def to_json(self) -> dict:
        return {"kind": self.kind, "rows_per_union": self.rows_per_union, "groups": self.groups, "k": self.k,
                "router": curve_json(self.router, "rows") if self.router is not None else None,
                "matmul": _rows_grid_json(self.matmul), "softmax_topk": _rows_grid_json(self.softmax_topk)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "HeadRowCosts":
        router = curve(data["router"], "rows") if data.get("router") is not None else None
        return cls(data["kind"], float(data["rows_per_union"]), int(data["groups"]), int(data["k"]), router,
                   _rows_grid(data["matmul"]), _rows_grid(data["softmax_topk"]))


def _rows_grid_json(grid: Grid) -> list[dict]:
    return [{"head_rows": u, "feature_rows": w, "seconds": s} for u, w, s in grid.points()]


def _rows_grid(data: Sequence[Mapping[str, Any]]) -> Grid:
    return Grid.from_points((p["head_rows"], p["feature_rows"], p["seconds"]) for p in data)
