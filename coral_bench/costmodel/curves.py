"""Measured latency as a function of size: ``Curve`` y(x) and ``Grid`` y(rows, context), and their JSON.

Pure maths, no torch (the speedup model's terms, docs/methods.md §7).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Curve:
    """y(x) through measured points, piecewise linear; linear beyond the ends, floored at 0."""

    xs: tuple[float, ...]  # [K] strictly increasing
    ys: tuple[float, ...]  # [K] seconds

    def __post_init__(self) -> None:
        if not self.xs or len(self.xs) != len(self.ys) or any(b <= a for a, b in zip(self.xs, self.xs[1:])):
            raise ValueError(f"a curve needs increasing xs with one y each (got {self.xs}, {self.ys})")

    def at(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if len(xs) == 1:
            return ys[0]
        i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)  # segment [i, i+1], end segments extrapolate
        slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        return max(0.0, ys[i] + slope * (x - xs[i]))

    @classmethod
    def from_points(cls, points: Iterable[tuple[float, float]]) -> "Curve":
        pts = sorted(dict(points).items())
        return cls(tuple(float(x) for x, _ in pts), tuple(float(y) for _, y in pts))


@dataclass(frozen=True)
class Grid:
    """y(rows, context), bilinear over a full grid of measured points (T_V(n, ctx), drafter body)."""

    rows: tuple[int, ...]  # [R] increasing
    contexts: tuple[int, ...]  # [C] increasing
    seconds: tuple[tuple[float, ...], ...]  # [C][R]

    def at(self, rows: float, context: float) -> float:
        per_context = [(c, Curve(self.rows, s).at(rows)) for c, s in zip(self.contexts, self.seconds)]
        return Curve.from_points(per_context).at(context)

    @classmethod
    def from_points(cls, points: Iterable[tuple[int, int, float]]) -> "Grid":
        """Points (rows, context, seconds); every rows × context pair must be present."""
        table = {(int(r), int(c)): float(s) for r, c, s in points}
        rows = tuple(sorted({r for r, _ in table}))
        contexts = tuple(sorted({c for _, c in table}))
        missing = [(r, c) for r in rows for c in contexts if (r, c) not in table]
        if not table or missing:
            raise ValueError(f"incomplete grid: missing (rows, context) {missing[:3]}")
        return cls(rows, contexts, tuple(tuple(table[(r, c)] for r in rows) for c in contexts))

    def points(self) -> list[tuple[int, int, float]]:
        return [(r, c, s) for c, row in zip(self.contexts, self.seconds) for r, s in zip(self.rows, row)]



def grid_json(grid: Grid) -> list[dict]:
    return [{"rows": r, "context": c, "seconds": s} for r, c, s in grid.points()]


def grid(data: Sequence[Mapping[str, Any]]) -> Grid:
    return Grid.from_points((p["rows"], p["context"], p["seconds"]) for p in data)


def curve_json(curve: Curve, x: str) -> list[dict]:
    return [{x: int(a), "seconds": b} for a, b in zip(curve.xs, curve.ys)]


def curve(data: Sequence[Mapping[str, Any]], x: str) -> Curve:
    return Curve.from_points((p[x], p["seconds"]) for p in data)
