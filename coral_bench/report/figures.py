"""Report figures: matplotlib → SVG text, deterministic (same runs → same bytes).

No pyplot and no global backend: each figure is a ``matplotlib.figure.Figure`` drawn inside an
``rc_context`` that fixes ``svg.hashsalt`` and the font, and saved without Date / Creator metadata.
Colours come from the Okabe–Ito palette (colour-blind safe); lines also differ by marker and the
time-split segments by hatch, so no figure relies on colour alone.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import matplotlib
from matplotlib.figure import Figure

# Okabe & Ito (2008), "Color Universal Design"; black is kept for vanilla, yellow comes last (low contrast).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
BLACK = "#000000"
GREY = "#999999"
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
HATCHES = ("", "//", "..", "xx")

_RC = {
    "svg.hashsalt": "coral-bench-report",
    "svg.fonttype": "path",  # glyphs as paths: looks the same in every browser, no font needed
    "font.family": "DejaVu Sans",  # ships with matplotlib
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}


@dataclass(frozen=True)
class Palette:
    """A colour and a marker per method label, the same in every figure of one report."""

    labels: tuple[str, ...]  # drafter labels in first-seen order

    def colour(self, label: str, kind: str = "drafter") -> str:
        if kind == "baseline":
            return BLACK
        if kind == "peer" or label not in self.labels:
            return GREY
        return OKABE_ITO[self.labels.index(label) % len(OKABE_ITO)]

    def marker(self, label: str) -> str:
        return MARKERS[self.labels.index(label) % len(MARKERS)] if label in self.labels else "o"


def render_svg(draw: Callable[[Figure], None], width: float, height: float) -> str:
    """Draw on a fresh figure of ``width`` × ``height`` inches and return its SVG text."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width, height), layout="constrained")
        draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return buf.getvalue().decode("utf-8")


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#444444", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _without(ax, names: Sequence[str]) -> None:
    """Name the methods a panel cannot draw (e.g. no accepted draft token), so none vanishes silently."""
    if names:
        ax.text(0.02, 0.02, "no accepted draft tokens: " + ", ".join(names), transform=ax.transAxes, fontsize=7,
                color="#444444", va="bottom")


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    """One horizontal bar of the speedup figure."""

    label: str
    value: float | None
    ci95: tuple[float, float] | None
    predicted: float | None
    colour: str


def speedup_figure(bars: Sequence[Bar]) -> str:
    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        if not bars:
            _empty(ax, "no drafters or peers in these runs")
            return
        ys = list(range(len(bars)))[::-1]
        for y, bar in zip(ys, bars):
            if bar.value is None:
                ax.text(1.0, y, "  no speedup recorded", va="center", fontsize=8)
                continue
            err = None
            if bar.ci95 is not None:
                err = [[max(bar.value - bar.ci95[0], 0.0)], [max(bar.ci95[1] - bar.value, 0.0)]]
            ax.barh(y, bar.value, color=bar.colour, xerr=err, capsize=3, height=0.6, edgecolor=BLACK, linewidth=0.5)
            end = max(bar.value, bar.ci95[1] if bar.ci95 else bar.value, bar.predicted or 0.0)
            ax.text(end, y, f"  {bar.value:.2f}×", va="center", ha="left", fontsize=7)
        predicted = [(y, b.predicted) for y, b in zip(ys, bars) if b.predicted is not None]
        if predicted:
            ax.scatter([p for _, p in predicted], [y for y, _ in predicted], marker="D", facecolor="white",
                       edgecolor=BLACK, zorder=3, label="predicted")
            ax.legend(loc="lower right")
        ax.axvline(1.0, color=BLACK, linestyle="--", linewidth=1)
        ax.set_yticks(ys, [b.label for b in bars])
        ax.set_xlabel("speedup over vanilla (× tokens/s, wall time incl. prefill); bars: 95% paired-bootstrap CI")
        ax.set_title("Measured speedup (dashed line: vanilla = 1×)")
        ends = [max(b.value, b.ci95[1] if b.ci95 else b.value, b.predicted or 0.0) for b in bars if b.value is not None]
        ax.set_xlim(0, max(ends + [1.0]) * 1.15)

    return render_svg(draw, 7.0, 1.4 + 0.38 * max(len(bars), 1))


@dataclass(frozen=True)
class Curve:
    """One method's series in a panel: reach by depth, or the accepted-count histogram."""

    label: str
    values: tuple[float, ...]  # reach_d for d = 1…, or fraction of cycles for accepted = 0…
    colour: str
    marker: str


@dataclass(frozen=True)
class Panel:
    title: str
    curves: tuple[Curve, ...]


def _panels(fig: Figure, panels: Sequence[Panel]):
    """One axes per run, side by side; y is a fraction in [0, 1] everywhere, so no sharing is needed."""
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    return list(zip(axes, panels))


def reach_figure(panels: Sequence[Panel]) -> str:
    def draw(fig: Figure) -> None:
        for ax, panel in _panels(fig, panels):
            ax.set_title(panel.title)
            curves = [c for c in panel.curves if c.values]
            if not curves:
                names = ", ".join(c.label for c in panel.curves)
                _empty(ax, f"no accepted draft tokens ({names})" if panel.curves else "no drafters")
                continue
            for c in curves:
                depths = range(1, len(c.values) + 1)
                ax.plot(depths, c.values, color=c.colour, marker=c.marker, label=c.label)
            _without(ax, [c.label for c in panel.curves if not c.values])
            depth = max(len(c.values) for c in curves)
            ax.set_xlabel("depth d (accepted draft tokens)")
            ax.set_xticks(range(1, depth + 1))
            ax.set_xlim(0.7, max(depth, 2) + 0.3)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("reach_d (fraction of cycles reaching ≥ d)")
            ax.legend(loc="upper right")
        fig.suptitle("Reach by depth")

    return render_svg(draw, min(4.2 * len(panels), 12.0) + 0.6, 3.4)


def accepted_figure(panels: Sequence[Panel]) -> str:
    def draw(fig: Figure) -> None:
        for ax, panel in _panels(fig, panels):
            ax.set_title(panel.title)
            curves = [c for c in panel.curves if c.values]
            if not curves:
                _empty(ax, "no drafters")
                continue
            width = 0.8 / len(curves)
            for i, c in enumerate(curves):
                xs = [a - 0.4 + width * (i + 0.5) for a in range(len(c.values))]
                ax.bar(xs, c.values, width=width, color=c.colour, label=c.label, edgecolor=BLACK, linewidth=0.4)
            top = max(len(c.values) for c in curves) - 1
            ax.set_xticks(range(top + 1))
            ax.set_xlim(-0.6, max(top, 2) + 0.6)
            ax.set_xlabel("accepted draft tokens per cycle")
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("fraction of cycles")
            ax.legend(loc="upper right")
        fig.suptitle("Accepted draft tokens per cycle")

    return render_svg(draw, min(4.2 * len(panels), 12.0) + 0.6, 3.4)


@dataclass(frozen=True)
class SplitBar:
    label: str
    parts_ms: tuple[float, float, float, float]  # drafting, target scoring, verifying, committing


SPLIT_PARTS = ("drafting", "target scoring", "verifying", "committing")
SPLIT_COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#D55E00")


def time_split_figure(bars: Sequence[SplitBar]) -> str:
    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        if not bars:
            _empty(ax, "no cycles.jsonl in these runs")
            return
        ys = list(range(len(bars)))[::-1]
        left = [0.0] * len(bars)
        for part, (name, colour, hatch) in enumerate(zip(SPLIT_PARTS, SPLIT_COLOURS, HATCHES)):
            widths = [b.parts_ms[part] for b in bars]
            ax.barh(ys, widths, left=left, color=colour, hatch=hatch, label=name, height=0.6, edgecolor=BLACK,
                    linewidth=0.4)
            left = [l + w for l, w in zip(left, widths)]
        for y, total in zip(ys, left):
            ax.text(total, y, f" {total:.2f} ms", va="center", fontsize=7)
        ax.set_yticks(ys, [b.label for b in bars])
        ax.set_xlabel("mean time per cycle (ms)")
        ax.set_xlim(0, max(left) * 1.18 if max(left) > 0 else 1)
        ax.set_title("Per-cycle time split (cycles.jsonl means)")
        fig.legend(loc="outside lower center", ncols=4)

    return render_svg(draw, 7.0, 1.9 + 0.38 * max(len(bars), 1))


@dataclass(frozen=True)
class Point:
    label: str
    predicted: float
    measured: float
    ci95: tuple[float, float] | None
    colour: str
    marker: str


def predicted_figure(points: Sequence[Point]) -> str:
    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        top = max(max(p.predicted, p.ci95[1] if p.ci95 else p.measured, p.measured) for p in points) * 1.1
        ax.plot([0, top], [0, top], color=BLACK, linestyle="--", linewidth=1, label="identity (prediction = measurement)")
        for p in points:
            err = None if p.ci95 is None else [[max(p.measured - p.ci95[0], 0.0)], [max(p.ci95[1] - p.measured, 0.0)]]
            ax.errorbar([p.predicted], [p.measured], yerr=err, color=p.colour, marker=p.marker, capsize=3,
                        linestyle="none", label=p.label)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_aspect("equal")
        ax.set_xlabel("predicted speedup (×)")
        ax.set_ylabel("measured speedup (×), 95% CI")
        ax.set_title("Predicted vs measured speedup")
        ax.legend(loc="upper left", fontsize=7)

    return render_svg(draw, 5.0, 5.0)


@dataclass(frozen=True)
class CostCurve:
    label: str
    nodes: tuple[int, ...]
    ms: tuple[float, ...]
    colour: str
    marker: str


def verification_cost_figure(curves: Sequence[CostCurve]) -> str:
    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        for c in curves:
            ax.plot(c.nodes, c.ms, color=c.colour, marker=c.marker, label=c.label)
        ax.set_xlabel("tree nodes n verified in one target forward")
        ax.set_ylabel("T_V(n) (ms)")
        ax.set_ylim(bottom=0)
        ax.set_title("Verification cost T_V(n) (profile pass)")
        ax.legend(loc="upper left", fontsize=7)

    return render_svg(draw, 6.0, 3.6)
