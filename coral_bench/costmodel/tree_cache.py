"""Tree choices cached per machine fingerprint and drafter, so a machine measures them once, not per run.

``$CORAL_BENCH_CACHE/trees/<machine key>/<drafter key>.json`` holds one :class:`~.tree_search.TreeChoice`
with the facts it was measured under: the machine fingerprint (:mod:`.machine`), the drafter's identity
(its name, checkpoint spec and the sha256 of the weights it loaded) and the search settings. A file
whose facts differ from the asking run's, or that cannot be read, is not used (the choice is measured
again and the file replaced). A choice measured on a busy machine is used by its run but not stored.
Delete the folder, or pass ``--retune``, to measure again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from coral_bench.run.targets import cache_root
from .machine import fingerprint_key

TREE_CACHE_ENV = "CORAL_BENCH_TREE_CACHE"


@dataclass(frozen=True)
class CachedChoice:
    record: Mapping[str, Any]  # TreeChoice.to_json()
    measured_at: str  # ISO date of the measurement


@dataclass(frozen=True)
class TreeCache:
    root: Path

    @classmethod
    def default(cls) -> "TreeCache":
        """``$CORAL_BENCH_TREE_CACHE``, else ``trees/`` in coral-bench's cache folder."""
        return cls(Path(os.environ[TREE_CACHE_ENV]) if os.environ.get(TREE_CACHE_ENV) else cache_root() / "trees")

    def path(self, machine: Mapping[str, Any], drafter: Mapping[str, Any], settings: Mapping[str, Any]) -> Path:
        return self.root / fingerprint_key(machine) / f"{fingerprint_key({'drafter': drafter, 'settings': settings})}.json"

    def load(self, machine: Mapping[str, Any], drafter: Mapping[str, Any],
             settings: Mapping[str, Any]) -> CachedChoice | None:
        """The cached choice for exactly these facts, or None (absent, unreadable, or made for others)."""
        path = self.path(machine, drafter, settings)
        try:
            data = json.loads(path.read_text())
            if (data["machine"], data["drafter"], data["settings"]) != (machine, drafter, settings):
                return None
            return CachedChoice(data["choice"], data["measured_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, machine: Mapping[str, Any], drafter: Mapping[str, Any], settings: Mapping[str, Any],
              record: Mapping[str, Any]) -> CachedChoice:
        """Write the choice atomically (a crash never leaves half a file that a later run would read)."""
        path = self.path(machine, drafter, settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        measured_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        text = json.dumps({"machine": dict(machine), "drafter": dict(drafter), "settings": dict(settings),
                           "measured_at": measured_at, "choice": dict(record)}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return CachedChoice(record, measured_at)

