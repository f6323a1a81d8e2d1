"""Summarise training trials (drafter checkpoints written by ``coral-bench train``) as a Markdown table.

For each checkpoint directory: method, the settings that differ between the trials, the held-out top-1
agreement by depth (``coral_bench.eval.accuracy`` of its config) and a chain proxy of the acceptance
length, τ̂ = 1 + Σ_j Π_{i≤j} a_i — a selection proxy on held-out training data (it treats depths as
independent), never a reported τ.

    python scripts/sweep_table.py TRIAL_DIR... [--keys csra_temperature,csra_weight,...]
    python scripts/sweep_table.py TRIAL_DIR... --select > scripts/train-settings.txt

``--select`` applies the rule fixed before the sweep ran: per method, the complete trial with the
highest τ̂, written as ``method options`` lines (the options of scripts/sweep-trials.txt) that
scripts/train_cpu.sh passes to the full runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

TRIALS_FILE = Path(__file__).with_name("sweep-trials.txt")
DEFAULT_KEYS = ("csra_temperature", "csra_weight", "csra_anchor", "distill_k", "step_decay", "history", "lr")


def chain_proxy(accuracy: list[float]) -> float:
    total, run = 1.0, 1.0
    for a in accuracy:
        run *= a
        total += run
    return total


def row(path: Path, keys: tuple[str, ...]) -> dict:
    meta = json.loads((path / "config.json").read_text())["coral_bench"]
    settings = {**meta["settings"], **meta["settings"]["loss"]}
    acc = (meta.get("eval") or {}).get("accuracy") or []
    return {"trial": path.name, "method": meta["method"], **{k: settings.get(k) for k in keys},
            "accuracy": acc, "proxy": chain_proxy(acc), "complete": meta["budget"].get("complete", True),
            "slots": meta["budget"]["tokens"], "wall_s": meta["budget"]["wall_time_s"]}


def trial_options(path: Path = TRIALS_FILE) -> dict[str, str]:
    """``method-name`` → the command-line options of that trial in scripts/sweep-trials.txt."""
    options = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            method, name, *args = line.split()
            options[f"{method}-{name}"] = " ".join(args)
    return options


def select(rows: list[dict]) -> list[str]:
    """Per method, the complete trial with the highest chain proxy, as ``method options`` lines."""
    options, lines = trial_options(), []
    for method in sorted({r["method"] for r in rows}):
        done = [r for r in rows if r["method"] == method and r["complete"]]
        if not done:
            continue
        best = max(done, key=lambda r: r["proxy"])
        lines.append(f"# {method}: {best['trial']} (τ̂ {best['proxy']:.3f}, best of {len(done)} complete trials)")
        lines.append(f"{method} {options[best['trial']]}".rstrip())
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trials", nargs="+", type=Path)
    parser.add_argument("--keys", default=",".join(DEFAULT_KEYS))
    parser.add_argument("--select", action="store_true", help="print the selected options per method")
    args = parser.parse_args()
    keys = tuple(k for k in args.keys.split(",") if k)
    rows = [row(p, keys) for p in args.trials if (p / "config.json").is_file()]
    if args.select:
        print("# Options per method for the full training runs (scripts/train_cpu.sh), one \"method options\" line\n"
              "# each; a method not listed keeps its defaults. Selected from the tuning sweep by\n"
              "# python scripts/sweep_table.py SWEEP/*/ --select (highest held-out τ̂ per method)")
        print("\n".join(select(rows)))
        return
    print("| trial | method | " + " | ".join(keys) + " | held-out top-1 by depth | τ̂ (chain proxy) | slots | s | complete |")
    print("|" + "---|" * (len(keys) + 7))
    for r in sorted(rows, key=lambda r: (r["method"], -r["proxy"])):
        acc = " / ".join(f"{a:.3f}" for a in r["accuracy"]) or "–"
        print(f"| {r['trial']} | {r['method']} | " + " | ".join(str(r[k]) for k in keys)
              + f" | {acc} | {r['proxy']:.3f} | {r['slots']:,} | {r['wall_s']:.0f} | {r['complete']} |")


if __name__ == "__main__":
    main()
