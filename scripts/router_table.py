"""The router sweep as a Markdown table, from a run's ``replays.json`` (``coral-bench replay``) and the
routed checkpoints' held-out recall (``coral-bench train-router``).

One row per replayed drafter: τ at T = 0 (exact, replay), its change against the unrouted reference
label, the mean |∪ selected groups| per drafter forward and the head rows that implies (|∪| · V / N,
as a fraction of V; a frequency subset @vocab=S computes S rows, the full head V), and for routed
drafters the partition, N, k and the held-out recall of the target's argmax at depths 1…3.

``--select LOSS`` applies the selection rule fixed before the sweep: among the routed settings
whose τ is at most LOSS (a fraction) below the reference's, the fewest head rows per forward
(ties: the higher τ). Head rows are what the router saves; τ is what it may cost.

    python scripts/router_table.py RUN_DIR [--reference coral] [--vocab 49152] [--select 0.02]
"""
from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--reference", default="coral", help="label of the unrouted drafter τ is compared with")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--args", type=Path, help="JSON {label: drafter argument} (default: RUN/replay-args.json)")
    ap.add_argument("--select", type=float, metavar="LOSS", help="name the routed setting the rule selects")
    ap.add_argument("--pivot", action="store_true",
                    help="compact: one row per partition and N, one column per k (τ · head rows / V)")
    args = ap.parse_args()
    replays = json.loads((args.run / "replays.json").read_text())
    drafter_args = json.loads((args.args or args.run / "replay-args.json").read_text()) \
        if (args.args or args.run / "replay-args.json").is_file() else {}
    ref = next((v["tau_pooled"] for v in replays.values() if v["label"] == args.reference), None)
    if not args.pivot:
        print("| drafter | tree | partition | N | k | recall d1/d2/d3 (k) | τ (replay) | Δτ vs "
              f"{args.reference} | mean ∣∪∣ | head rows / V |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    routed = []  # (rows, -τ, label) of routed settings, for --select
    cells: dict[tuple[str, int], dict[int, str]] = {}  # --pivot: (partition, N) -> {k: cell}
    for key, v in sorted(replays.items(), key=lambda kv: kv[0]):
        router, k = router_of(drafter_args.get(v["label"], ""))
        union = mean_union(v)
        groups = (router or {}).get("groups")
        rows = head_rows(drafter_args.get(v["label"], ""), union, groups, args.vocab)
        if router:
            routed.append((rows, -v["tau_pooled"], v["label"]))
            cells.setdefault((router["partition"]["rule"], router["groups"]), {})[k] = \
                f"{v['tau_pooled']:.3f} · {rows:.3f}"
        elif args.pivot:
            cells.setdefault((v["label"], 0), {})[0] = f"{v['tau_pooled']:.3f} · {rows:.3f}"
        recall = "–"
        if router and k:
            evals = ((router.get("training") or {}).get("eval") or {}).get("recall", [])
            hit = next((r for r in evals if r["k"] == k), None)
            recall = "/".join(f"{x:.3f}" for x in hit["target_argmax"]) if hit else "–"
        tau = v["tau_pooled"]
        delta = f"{(tau / ref - 1) * 100:+.1f} %" if (ref and tau) else "–"
        partition = ((router or {}).get("partition") or {}).get("rule", "–")
        if args.pivot:
            continue
        print(f"| {v['label']} | {v['tree']} | {partition} | {groups or '–'} | {k or '–'} | {recall} | "
              f"{tau:.3f} | {delta} | {'–' if union is None else f'{union:.2f}'} | "
              f"{rows:.3f} |")
    if args.pivot:
        ks = sorted({k for row in cells.values() for k in row if k})
        print("| head | " + " | ".join(f"k = {k}: τ · rows/V" for k in ks) + " |")
        print("|---|" + "---|" * len(ks))
        def order(item):  # unrouted heads first, largest first; then routed by partition and N
            (name, n), row = item
            return (n > 0, name if n else -float(row[0].split(" · ")[1].split()[0]), n)

        for (name, n), row in sorted(cells.items(), key=order):
            label = f"{name}, N = {n}" if n else name
            print(f"| {label} | " + (" | ".join(row.get(k, "–") for k in ks) if n else
                                     f"{row[0]} (no router)" + " |" * (len(ks) - 1)) + " |")
    if args.select is not None and ref:
        eligible = sorted(r for r in routed if -r[1] >= ref * (1 - args.select))
        print(f"\nselected (τ within {args.select:.0%} of {args.reference}, fewest head rows): "
              + (f"{eligible[0][2]} (head rows {eligible[0][0]:.3f} V, τ {-eligible[0][1]:.3f})" if eligible else "none"))


if __name__ == "__main__":
    main()
