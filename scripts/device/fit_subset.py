"""How many store sequences fit a training budget, from short calibration runs (used by train_embedded.sh).

    python scripts/device/fit_subset.py STORE BUDGET_S EPOCHS CAL_DIR:WEIGHT... [--min-sequences N]

Each CAL_DIR is a checkpoint folder of a short `coral-bench train` run; its train-log.jsonl gives
slots/s (the first step, which loads the shards, is left out). WEIGHT says how many runs of that
speed the budget must hold (e.g. eagle2:1, coral:2 for hass + coral). Prints N: the largest prefix
of the store whose slots × EPOCHS fit, at least --min-sequences, at most all.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from coral_bench.train.batching import slot_count
from coral_bench.train.store import FeatureStore


def rate(folder: Path) -> float:
    steps = [r for r in map(json.loads, (folder / "train-log.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    steps = steps[1:] or steps
    return sum(r["slots"] for r in steps) / max(sum(r["slots"] / r["tokens_per_s"] for r in steps), 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("budget_s", type=float)
    parser.add_argument("epochs", type=int)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--min-sequences", type=int, default=1)
    args = parser.parse_args()
    seconds_per_slot = 0.0
    for spec in args.runs:
        folder, weight = spec.rsplit(":", 1)
        seconds_per_slot += float(weight) / rate(Path(folder))
    fit = args.budget_s / (seconds_per_slot * args.epochs)
    lengths = FeatureStore(args.store).lengths()
    total, n = 0, 0
    for length in lengths:
        if total + slot_count(length) > fit:
            break
        total += slot_count(length)
        n += 1
    print(max(n, min(args.min_sequences, len(lengths))))


if __name__ == "__main__":
    main()
