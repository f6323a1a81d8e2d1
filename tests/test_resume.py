"""A real `coral-bench run` killed with SIGKILL (and once mid-line) resumes to the same samples."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from coral_bench.rundir.layout import CRASH_MID_LINE_ENV

CLI = str(Path(sys.executable).with_name("coral-bench"))
ARGS = ["run", "--suite", "mtbench", "--target", "tiny-random", "--dtype", "float64", "--threads", "1",
        "--limit", "3", "--max-new-tokens", "24", "--drafter", "prompt-lookup"]


def _run(out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *ARGS, "--out", str(out), *extra], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _samples(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return [(r["method"], r["question_id"], r["turn"], tuple(r["output_ids"]), r["output_text"]) for r in rows]


def test_sigkill_and_crash_mid_line_then_resume(tmp_path):
    reference = tmp_path / "reference"
    assert _run(reference).returncode == 0
    expected = sorted(_samples(reference))
    assert len(expected) == 3 * 2 * 3  # methods × turns × questions

    crashed = tmp_path / "mid-line"
    first = _run(crashed, env={CRASH_MID_LINE_ENV: "5"})
    assert first.returncode == 137
    assert not (crashed / "samples.jsonl").read_bytes().endswith(b"\n")  # a half-written line is left
    assert _run(crashed, "--resume").returncode == 0
    got = _samples(crashed)
    assert sorted(got) == expected and len(set(got)) == len(got)

    killed = tmp_path / "sigkill"
    proc = subprocess.Popen([CLI, *ARGS, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        lines = (killed / "samples.jsonl").read_bytes().count(b"\n") if (killed / "samples.jsonl").exists() else 0
        if lines >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = (killed / "samples.jsonl").read_bytes().count(b"\n")
    assert 4 <= partial < len(expected)  # it was killed mid-run
    assert _run(killed, "--resume").returncode == 0
    got = _samples(killed)
    assert sorted(got) == expected and len(set(got)) == len(got)
    events = [json.loads(line)["event"] for line in (killed / "sessions.jsonl").read_text().splitlines()]
    assert events == ["start", "start", "end"]  # the killed session left its start (and its load) behind
