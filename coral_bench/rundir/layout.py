"""The run directory: layout, the samples log that makes runs resumable, and results.json.

Layout of one run (``--out``, default ``runs/<suite>-<timestamp>/``):

- ``config.json``     resolved configuration, written first; ``--resume`` checks it.
- ``samples.jsonl``   one line per (method, question id, turn), flushed and fsync'd as each finishes.
                      A truncated last line (a crash mid-write) is dropped and redone on resume.
- ``cycles.jsonl``    per-cycle records of drafted methods (nodes, depth, D, accepted, times).
- ``sessions.jsonl``  a start and an end line per invocation (the first run and each ``--resume``):
                      date, git hash, machine load, samples added — a resumed run's timings come
                      from several sessions, and results report the worst load among them.
- ``results.json``    summary (schema below), rewritten from the samples at the end of a run.

``results.json`` (``schema_version`` 1): ``config``, ``provenance``, ``baseline`` (vanilla),
``drafters.<name>`` and ``peers.<name>`` sharing one record shape (see ``stats.MethodSummary``),
plus per-drafter ``speedup*``, equality with vanilla, tree settings and parameter counts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from coral_bench.core.records import CycleRecord, SampleRecord

SCHEMA_VERSION = 1
CONFIG = "config.json"
SAMPLES = "samples.jsonl"
CYCLES = "cycles.jsonl"
RESULTS = "results.json"
REPLAYS = "replays.json"  # coral-bench replay: τ of other drafter settings along vanilla's output
SESSIONS = "sessions.jsonl"  # start and end of each invocation (first run, each resume): when, load, samples
VANILLA = "vanilla"  # the baseline's result key in every run (it runs the drafter of the same name)
# Test-only fault injection: crash in the middle of writing the N-th sample line (resume test).
CRASH_MID_LINE_ENV = "CORAL_BENCH_TEST_CRASH_MID_LINE"


class RunDirError(ValueError):
    """A run directory that cannot be used as asked."""


def create_run_dir(path: Path, config: dict, resume: bool) -> None:
    """Create ``path`` for a new run, or check that ``--resume`` continues the same configuration."""
    if (path / CONFIG).exists():
        if not resume:
            raise RunDirError(f"{path} already holds a run: pass --resume to continue it, or choose another --out")
        old = json.loads((path / CONFIG).read_text())
        diff = sorted(k for k in set(old) | set(config) if k not in RESUME_FREE and old.get(k) != config.get(k))
        if diff:
            raise RunDirError(f"cannot resume {path}: its configuration differs in {', '.join(diff)}")
        return
    if resume and path.exists() and any(path.iterdir()):
        raise RunDirError(f"{path} is not a coral-bench run directory (no {CONFIG})")
    if path.exists() and any(path.iterdir()):
        raise RunDirError(f"{path} exists and is not empty; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / CONFIG, config)


RESUME_FREE = {"limit", "resume", "command",  # may change between the first run and a resume
               "run_config"}  # repeats the keys compared here, as RunConfig fields (limit included)


def write_json(path: Path, data: dict) -> None:
    """Atomic write: a crash never leaves a half-written JSON file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_samples(path: Path) -> list[SampleRecord]:
    """Finished samples. An unfinished last line (a crash mid-write) is cut off the file, so that
    ``--resume`` redoes that sample; a corrupt complete line is an error naming its number."""
    file = path / SAMPLES
    if not file.exists():
        return []
    raw = file.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):
        with open(file, "r+b") as f:
            f.truncate(len(complete))
    records = []
    for number, line in enumerate(complete.splitlines(), start=1):
        try:
            records.append(SampleRecord.from_json(json.loads(line)))
        except (ValueError, TypeError):
            raise RunDirError(f"{file}:{number}: corrupt sample line") from None
    keys = [r.key for r in records]
    if len(set(keys)) != len(keys):
        raise RunDirError(f"{file} holds duplicate samples")
    return records


def prune_cycles(path: Path, finished: set[tuple[str, str, int]]) -> None:
    """Keep the cycle rows of finished samples only (a crash may leave rows of an unfinished one)."""
    file = path / CYCLES
    if not file.exists():
        return
    keep, seen = [], set()
    for line in file.read_bytes().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        key = (row["method"], row["question_id"], row["turn"])
        if key in finished and (key, row["cycle"]) not in seen:
            seen.add((key, row["cycle"]))
            keep.append(line + b"\n")
    tmp = file.with_suffix(".tmp")
    tmp.write_bytes(b"".join(keep))
    os.replace(tmp, file)


def read_cycles(path: Path) -> list[dict]:
    file = path / CYCLES
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_bytes().splitlines() if line.strip()]


class SampleLog:
    """Appends sample and cycle records; every sample line is flushed and fsync'd."""

    def __init__(self, path: Path):
        self._samples = open(path / SAMPLES, "ab")
        self._cycles = open(path / CYCLES, "ab")
        self._crash_at = int(os.environ.get(CRASH_MID_LINE_ENV, "0"))
        self._written = 0

    def append(self, record: SampleRecord, cycles: tuple[CycleRecord, ...]) -> None:
        if cycles:
            rows = [{"method": record.method, "question_id": record.question_id, "turn": record.turn, "cycle": i,
                     **asdict(c)} for i, c in enumerate(cycles)]
            self._cycles.write("".join(json.dumps(r) + "\n" for r in rows).encode())
            self._cycles.flush()
        line = (json.dumps(record.to_json()) + "\n").encode()
        self._written += 1
        if self._written == self._crash_at:
            self._samples.write(line[: len(line) // 2])
            self._samples.flush()
            os.fsync(self._samples.fileno())
            os._exit(137)  # simulate SIGKILL mid-write
        self._samples.write(line)
        self._samples.flush()
        os.fsync(self._samples.fileno())

    def close(self) -> None:
        self._samples.close()
        self._cycles.close()


def append_session(path: Path, session: dict) -> list[dict]:
    """Record the start or end of an invocation; returns every session line of the run so far."""
    with open(path / SESSIONS, "a") as f:
        f.write(json.dumps(session) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return [json.loads(line) for line in (path / SESSIONS).read_text().splitlines() if line.strip()]
