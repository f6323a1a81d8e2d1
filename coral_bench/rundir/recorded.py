"""What a run directory recorded about how it ran (config.json) and what it measured per drafter
(results.json), typed: the one way every command that works on an existing run reads them.

``reader.py`` loads whole runs for reports; this is the small view the analysis commands (profile,
estimate-speedup, replay, a resumed ``--tree auto`` run) need. Pure Python, never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from coral_bench.rundir import layout as rd
from coral_bench.rundir.layout import RunDirError


@dataclass(frozen=True)
class RecordedDrafter:
    """One ``--drafter`` as the run resolved it."""

    label: str  # result key
    name: str  # registry name
    checkpoint: str | None  # with folded options (drafters/options.py)
    tree: str | None  # the tree the drafter decoded with (config.json ``methods.<label>.tree``)


@dataclass(frozen=True)
class RecordedConfig:
    """config.json: the suite, target and settings a run used, and each method's tree."""

    suite: str
    suite_source: str
    limit: int | None
    target: str
    dtype: str
    device: str
    threads: int | None
    sampling: Mapping[str, Any]  # SamplingConfig's fields
    drafters: tuple[RecordedDrafter, ...]
    method_trees: Mapping[str, str | None]  # every method's label → its tree (None: the baseline, peers)
    tree_auto_drafters: Mapping[str, Mapping[str, Any]]  # --tree auto: label → the recorded choice

    @property
    def seed(self) -> int:
        return int(self.sampling.get("seed", 0))

    def drafter(self, label: str) -> RecordedDrafter | None:
        return next((d for d in self.drafters if d.label == label), None)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path.parent} is not a coral-bench run directory (no {path.name})") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} cannot be read as JSON ({exc})") from None


def read_config(run_dir: Path) -> RecordedConfig:
    path = Path(run_dir) / rd.CONFIG
    data = read_json(path)
    try:
        methods = {label: m.get("tree") for label, m in data.get("methods", {}).items()}
        drafters = tuple(RecordedDrafter(d["label"], d["name"], d.get("checkpoint"), methods.get(d["label"]))
                         for d in data.get("drafters", []))
        auto = (data.get("tree_auto") or {}).get("drafters", {})
        return RecordedConfig(data["suite"], data.get("suite_source", data["suite"]), data.get("limit"),
                              data["target"], data["dtype"], data["device"], data.get("threads"),
                              dict(data.get("sampling", {})), drafters, methods, dict(auto))
    except (KeyError, TypeError, AttributeError) as exc:
        raise RunDirError(f"{path} is not a coral-bench run configuration (missing or malformed {exc})") from None


def drafter_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """results.json's ``drafters`` section: label → that drafter's measured record."""
    path = Path(run_dir) / rd.RESULTS
    data = read_json(path)
    drafters = data.get("drafters") if isinstance(data, dict) else None
    if not isinstance(drafters, dict):
        raise RunDirError(f"{path} has no drafters section: not a coral-bench results file")
    return drafters
