"""Resumable training state: where a run stands (``Position``) and the files that let it continue.

``training-state/state.pt`` holds the model, optimizer, scheduler, RNG states, position, settings and
the feature store's manifest hash; ``train-log.jsonl`` one line per optimizer step and evaluation. A
resumed run checks its settings against the saved ones, drops the log lines after the checkpoint and
restores the RNG states, so an interrupted and resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..drafters.eagle_model import EagleModel
from .reporting import EvalResult
from .settings import RESUMABLE_CHANGES, TrainSettings

STATE_DIR = "training-state"
STATE_FILE = "state.pt"
LOG_FILE = "train-log.jsonl"


@dataclass(frozen=True)
class Position:
    """Where training stands: the next batch to run and what was done."""

    epoch: int = 0
    batch: int = 0  # index into plans[epoch]
    optimizer_steps: int = 0
    tokens: int = 0
    wall_time_s: float = 0.0


def _rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), int(pos), int(has_gauss), float(cached))}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_state(path: Path, model: EagleModel, optimizer, scheduler, position: Position, settings: TrainSettings,
               manifest: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": _rng_states(), "position": asdict(position), "settings": settings.to_dict(),
            "manifest_sha256": manifest}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(body, tmp)
    os.replace(tmp, path)


def settings_differences(saved: dict[str, Any], now: TrainSettings) -> list[str]:
    """What differs between a checkpoint's settings and these. A setting the checkpoint lacks (added to
    coral-bench after it was written) counts as its default: the run it made had that behaviour."""
    current = now.to_dict()
    defaults = {f.name: f.default for f in fields(TrainSettings) if f.default is not MISSING}
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    return [f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)]


def truncate_log(path: Path, steps: int) -> None:
    """Keep the log lines of the first ``steps`` optimizer steps (work after the checkpoint is redone)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if rec.get("step", 0) <= steps:
            kept.append(line)
    path.write_text("".join(k + "\n" for k in kept))


def last_logged_eval(path: Path) -> EvalResult | None:
    found = None
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "eval":
                found = rec
    if found is None:
        return None
    found.pop("kind")
    found["accuracy"] = tuple(found["accuracy"])
    return EvalResult(**found)
