"""The committed reports as data: a TOML manifest naming each report's output directory and the
run directories it is rendered from, and re-rendering all of them (``make reports``).

``reports/reports.toml``::

    [[report]]
    out = "preview-cpu"
    runs = ["runs/mtbench-bf16-cpu", "runs/gsm8k-bf16-cpu"]

Paths are relative to the manifest's directory; the order of ``runs`` names them A, B, …
Rendering reads result files only (no torch, no model), so the whole set takes seconds.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .document import ReportFiles, write_report
from coral_bench.rundir.reader import ReportError

KEYS = ("out", "runs")


@dataclass(frozen=True)
class ManifestEntry:
    """One committed report: where it is written and the run directories it is rendered from."""

    out: Path
    runs: tuple[Path, ...]


def load_manifest(path: Path) -> tuple[ManifestEntry, ...]:
    """The ``[[report]]`` entries of ``path``; :class:`ReportError` with one line for anything malformed."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the report manifest ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} is not valid TOML ({exc})") from None
    reports = data.get("report")
    if not isinstance(reports, list) or not reports:
        raise ReportError(f"{path} has no [[report]] entries")
    entries = tuple(_entry(item, path, number) for number, item in enumerate(reports, start=1))
    outs = [e.out for e in entries]
    repeated = sorted({str(o) for o in outs if outs.count(o) > 1})
    if repeated:
        raise ReportError(f"{path}: more than one [[report]] writes to {', '.join(repeated)}")
    return entries


def _entry(item: object, path: Path, number: int) -> ManifestEntry:
    where = f"{path}: [[report]] #{number}"
    if not isinstance(item, dict):
        raise ReportError(f"{where} is not a table")
    unknown = sorted(set(item) - set(KEYS))
    if unknown:
        raise ReportError(f"{where} has unknown key(s) {', '.join(unknown)} (known: {', '.join(KEYS)})")
    out, runs = item.get("out"), item.get("runs")
    if not isinstance(out, str) or not out:
        raise ReportError(f"{where} needs out = \"DIR\" (the report's directory)")
    if not isinstance(runs, list) or not runs or not all(isinstance(r, str) and r for r in runs):
        raise ReportError(f"{where} needs runs = [\"RUN_DIR\", …] (at least one run directory)")
    base = path.parent
    return ManifestEntry(base / out, tuple(base / r for r in runs))


def render_manifest(path: Path) -> tuple[ReportFiles, ...]:
    """Re-render every report of the manifest from its run directories, in manifest order."""
    return tuple(write_report(entry.runs, entry.out) for entry in load_manifest(path))


def manifest_runs(path: Path) -> tuple[Path, ...]:
    """Every run directory the manifest names, once each, in first-seen order."""
    seen: list[Path] = []
    for entry in load_manifest(path):
        seen += [r for r in entry.runs if r not in seen]
    return tuple(seen)
