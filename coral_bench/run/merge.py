"""Sharded evaluation: ``coral-bench run --shard I/N`` runs every N-th question (one machine or GPU per
shard); ``coral-bench merge`` joins the shard directories into the run the unsharded command would
have written.

The merged directory holds the union of the shards' samples, cycles and sessions, and the config of
the unsharded run; its results are then built by ``run_suite`` resuming that directory, which finds
every sample finished and so runs the same statistics, equality judgement and provenance code as an
unsharded run. The shards measured the noise bounds on the whole suite's first prompts, so they
agree (checked), and their per-method peak device memory is the maximum over the shards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from coral_bench.rundir import layout as rd
from coral_bench.rundir.layout import RunDirError
from coral_bench.run.accelerator import PEAK_MEMORY
from coral_bench.run.judge import NOISE

# keys of config.json that differ between the shards of one run (the rest must be equal)
_PER_SHARD = ("shard", "questions", "command", "run_config")


def merge_shards(shards: list[Path], out: Path, command: str = "",
                 progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Join shard run directories into ``out`` and build its results; returns them."""
    from coral_bench.run.runner import RunConfig, run_suite

    configs = [_shard_config(d) for d in shards]
    count = {c["run_config"]["shard"][1] for c in configs}
    indices = sorted(c["run_config"]["shard"][0] for c in configs)
    if len(count) != 1 or indices != list(range(next(iter(count)))):
        found = ", ".join(c["shard"] for c in configs)
        raise RunDirError(f"the shards must be 0/N … N−1/N of one run, each once (got {found})")
    first = configs[0]
    for d, c in zip(shards[1:], configs[1:]):
        diff = sorted(k for k in set(first) | set(c) if k not in _PER_SHARD and first.get(k) != c.get(k))
        run_diff = sorted(k for k in set(first["run_config"]) | set(c["run_config"])
                          if k != "shard" and first["run_config"].get(k) != c["run_config"].get(k))
        if diff or run_diff:
            raise RunDirError(f"{d} is a shard of another run than {shards[0]}: it differs in {', '.join(diff + run_diff)}")
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out} exists and is not empty; choose another --out")
    noise = _same_noise(shards)
    out.mkdir(parents=True, exist_ok=True)
    try:
        _join_logs(shards, out)
        if noise is not None:
            shutil.copyfile(shards[0] / NOISE, out / NOISE)
        _join_peak_memory(shards, out)
        config = RunConfig.from_json(first["run_config"] | {"shard": None})
        merged = first | {"shard": None, "questions": sum(c["questions"] for c in configs),
                                                     "command": command, "run_config": config.to_json()}
        rd.write_json(out / rd.CONFIG, merged)
        return run_suite(config, out, resume=True, command=command, progress=progress)
    except Exception:
        if not (out / rd.RESULTS).exists():
            shutil.rmtree(out, ignore_errors=True)  # never leave a half-merged directory that looks like a run
        raise


def _shard_config(run_dir: Path) -> dict:
    path = run_dir / rd.CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{run_dir} is not a coral-bench run directory (no {rd.CONFIG})") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} cannot be read as JSON ({exc})") from None
    if not (config.get("run_config") or {}).get("shard"):
        raise RunDirError(f"{run_dir} is not a shard (run with --shard I/N)")
    if not (run_dir / rd.RESULTS).exists():
        raise RunDirError(f"{run_dir} is not finished (no {rd.RESULTS}): resume it with --resume first")
    return config


def _same_noise(shards: list[Path]) -> dict | None:
    bounds = [json.loads((d / NOISE).read_text()) if (d / NOISE).exists() else None for d in shards]
    if any(b != bounds[0] for b in bounds):
        raise RunDirError("the shards measured different noise bounds (another machine, dtype or library version?): "
                          "merge shards run alike")
    return bounds[0]


def _join_logs(shards: list[Path], out: Path) -> None:
    keys: set[tuple[str, str, int]] = set()
    for d in shards:
        for record in rd.read_samples(d):
            if record.key in keys:
                raise RunDirError(f"{d} repeats sample {record.key} of another shard")
            keys.add(record.key)
    for name in (rd.SAMPLES, rd.CYCLES):
        with open(out / name, "wb") as f:
            for d in shards:
                if (d / name).exists():
                    f.write((d / name).read_bytes())
    sessions = [json.loads(line) for d in shards if (d / rd.SESSIONS).exists()
                for line in (d / rd.SESSIONS).read_text().splitlines() if line.strip()]
    sessions.sort(key=lambda s: s["date"])  # stable: a shard's start stays before its end
    (out / rd.SESSIONS).write_text("".join(json.dumps(s) + "\n" for s in sessions))


def _join_peak_memory(shards: list[Path], out: Path) -> None:
    peaks: dict[str, int] = {}
    for d in shards:
        if (d / PEAK_MEMORY).exists():
            for label, peak in json.loads((d / PEAK_MEMORY).read_text()).items():
                peaks[label] = max(peak, peaks.get(label, 0))
    if peaks:
        (out / PEAK_MEMORY).write_text(json.dumps(peaks, indent=1, sort_keys=True) + "\n")
