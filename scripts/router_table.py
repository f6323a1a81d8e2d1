"""The router sweep as a Markdown table, from a run's ``replays.json`` (``coral-bench replay``) and the
routed checkpoints' held-out recall (``coral-bench train-router``).

One row per replayed drafter: τ at T = 0 (exact, replay), its change against the unrouted reference
label, the mean |∪ selected groups| per drafter forward and the head rows that implies (|∪| · V / N,
as a fraction of V; a frequency subset @vocab=S computes S rows, the full head V), and for routed
drafters the partition, N, k and the held-out recall of the target's argmax at depths 1…3.

``--timed`` reads a timed run instead (``coral-bench run``): the measured |∪| per drafter forward of
each routed drafter, from its cycles.jsonl.

``--select LOSS`` applies the selection rule fixed before the sweep: among the routed settings
whose τ is at most LOSS (a fraction) below the reference's, the fewest head rows per forward
(ties: the higher τ). Head rows are what the router saves; τ is what it may cost.

    python scripts/router_table.py RUN_DIR [--reference coral] [--vocab 49152] [--select 0.02] [--pivot]
    python scripts/router_table.py RUN_DIR --timed
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path


def mean_union(entry: dict) -> float | None:
    sizes = [u for s in entry["samples"] for cycle in s["head_union"] for u in cycle]
    return sum(sizes) / len(sizes) if sizes else None


def router_of(drafter_arg: str) -> tuple[dict | None, int | None]:
    """(router section of the checkpoint's config, router_k in force) for LABEL=coral-router:CKPT@router_k=K."""
    body = drafter_arg.split("=", 1)[-1]
    if not body.startswith("coral-router:"):  # unrouted (a routed checkpoint run as coral ignores its router)
        return None, None
    ckpt, *options = body.split(":", 1)[1].split("@")
    opts = dict(o.split("=", 1) for o in options if "=" in o)
    config = Path(ckpt).expanduser() / "config.json"
    if not config.is_file():
        return None, None
    router = json.loads(config.read_text())["coral_bench"].get("router")
    k = int(opts["router_k"]) if "router_k" in opts else (router or {}).get("k")
    return router, k


def head_rows(drafter_arg: str, union: float | None, groups: int | None, vocab: int) -> float:
    """Head rows one drafter forward computes, as a fraction of the vocabulary."""
    if union is not None and groups:
        return union / groups
    opts = dict(o.split("=", 1) for o in drafter_arg.split("@")[1:] if "=" in o)
    return int(opts["vocab"]) / vocab if "vocab" in opts else 1.0


@dataclass(frozen=True)
class Row:
    """One replayed drafter: τ, and what its head costs (rows per forward / V)."""

    label: str
    tree: str
    tau: float
    rows: float
    union: float | None  # mean |∪ selected groups| (routed heads only)
    router: dict | None  # the checkpoint's router section (routed heads only)
    k: int | None

    def recall(self) -> str:
        evals = ((self.router or {}).get("training") or {}).get("eval") or {}
        hit = next((r for r in evals.get("recall", []) if r["k"] == self.k), None)
        return "/".join(f"{x:.3f}" for x in hit["target_argmax"]) if hit else "–"


def replayed_rows(run: Path, drafter_args: dict, vocab: int) -> list[Row]:
    replays = json.loads((run / "replays.json").read_text())
    rows = []
    for _, v in sorted(replays.items()):
        arg = drafter_args.get(v["label"], "")
        router, k = router_of(arg)
        union = mean_union(v)
        rows.append(Row(v["label"], v["tree"], v["tau_pooled"],
                        head_rows(arg, union, (router or {}).get("groups"), vocab), union, router, k))
    return rows


def print_table(rows: list[Row], ref: float | None, reference: str) -> None:
    print(f"| drafter | tree | partition | N | k | recall d1/d2/d3 (k) | τ (replay) | Δτ vs {reference} | "
          "mean ∣∪∣ | head rows / V |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rule = r.router["partition"]["rule"] if r.router else "–"
        groups = r.router["groups"] if r.router else "–"
        delta = f"{(r.tau / ref - 1) * 100:+.1f} %" if ref else "–"
        union = "–" if r.union is None else f"{r.union:.2f}"
        print(f"| {r.label} | {r.tree} | {rule} | {groups} | {r.k or '–'} | {r.recall()} | {r.tau:.3f} | {delta} | "
              f"{union} | {r.rows:.3f} |")


def print_pivot(rows: list[Row]) -> None:
    """Unrouted heads first (largest first), then one row per partition and N with a column per k."""
    ks = sorted({r.k for r in rows if r.router})
    print("| head | " + " | ".join(f"k = {k}: τ · rows/V" for k in ks) + " |")
    print("|---|" + "---|" * len(ks))
    for r in sorted((r for r in rows if not r.router), key=lambda r: -r.rows):
        print(f"| {r.label} | {r.tau:.3f} · {r.rows:.3f} (no router) |" + " |" * (len(ks) - 1))
    grid: dict[tuple[str, int], dict[int, Row]] = {}
    for r in rows:
        if r.router:
            grid.setdefault((r.router["partition"]["rule"], r.router["groups"]), {})[r.k] = r
    for (rule, n), by_k in sorted(grid.items()):
        cells = (f"{by_k[k].tau:.3f} · {by_k[k].rows:.3f}" if k in by_k else "–" for k in ks)
        print(f"| {rule}, N = {n} | " + " | ".join(cells) + " |")


def print_timed(run: Path) -> None:
    """Measured |∪ selected groups| per drafter forward of each routed drafter of a timed run."""
    sizes: dict[str, list[int]] = {}
    with open(run / "cycles.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if row.get("head_union"):
                sizes.setdefault(row["method"], []).extend(row["head_union"])
    print("| drafter | forwards | mean ∣∪∣ | max ∣∪∣ |")
    print("|---|---|---|---|")
    for label, u in sorted(sizes.items()):
        print(f"| {label} | {len(u)} | {sum(u) / len(u):.3f} | {max(u)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--reference", default="coral", help="label of the unrouted drafter τ is compared with")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--args", type=Path, help="JSON {label: drafter argument} (default: RUN/replay-args.json)")
    ap.add_argument("--select", type=float, metavar="LOSS", help="name the routed setting the rule selects")
    ap.add_argument("--pivot", action="store_true",
                    help="compact: one row per partition and N, one column per k (τ · head rows / V)")
    ap.add_argument("--timed", action="store_true", help="RUN is a timed run: measured |∪| per routed drafter")
    args = ap.parse_args()
    if args.timed:
        print_timed(args.run)
        return
    args_file = args.args or args.run / "replay-args.json"
    drafter_args = json.loads(args_file.read_text()) if args_file.is_file() else {}
    rows = replayed_rows(args.run, drafter_args, args.vocab)
    ref = next((r.tau for r in rows if r.label == args.reference), None)
    if args.pivot:
        print_pivot(rows)
    else:
        print_table(rows, ref, args.reference)
    if args.select is not None and ref:
        eligible = sorted((r.rows, -r.tau, r.label) for r in rows if r.router and r.tau >= ref * (1 - args.select))
        print(f"\nselected (τ within {args.select:.0%} of {args.reference}, fewest head rows): "
              + (f"{eligible[0][2]} (head rows {eligible[0][0]:.3f} V, τ {-eligible[0][1]:.3f})" if eligible else "none"))


if __name__ == "__main__":
    main()
