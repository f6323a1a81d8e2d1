"""scripts/train_cpu.sh: a run the OOM killer ends (exit 137) resumes by itself, up to RETRIES times;
any other failure stops the script with that status. A fake `coral-bench` stands in for training."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_script(tmp_path: Path, statuses: list[int], retries: int) -> tuple[int, list[str]]:
    """Run train_cpu.sh for eagle2 with a fake trainer that exits with ``statuses`` in turn."""
    calls, queue = tmp_path / "calls", tmp_path / "statuses"
    queue.write_text("".join(f"{s}\n" for s in statuses))
    fake = tmp_path / "fake-coral-bench"
    fake.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {calls}
status=$(head -n 1 {queue}); sed -i 1d {queue}
exit "$status"
""")
    fake.chmod(0o755)
    env = {**os.environ, "CB": str(fake), "METHODS": "eagle2", "OUT": str(tmp_path / "out"),
           "DATA": str(tmp_path / "data"), "SETTINGS": str(tmp_path / "none"), "RETRIES": str(retries)}
    done = subprocess.run(["bash", "scripts/train_cpu.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    lines = calls.read_text().splitlines() if calls.exists() else []
    return done.returncode, lines


@pytest.mark.parametrize("statuses, retries, code, runs", [
    ([0], 3, 0, 1),  # finished at once
    ([137, 137, 0], 3, 0, 3),  # killed twice by the OOM killer, resumed twice
    ([137, 137], 1, 137, 2),  # out of retries: the kill's status
    ([1], 3, 1, 1),  # an error is not retried
    ([143], 3, 143, 1),  # nor a SIGTERM (someone stopped it)
])
def test_oom_kills_are_resumed_and_other_failures_stop(tmp_path, statuses, retries, code, runs):
    status, calls = run_script(tmp_path, statuses, retries)
    assert status == code and len(calls) == runs
    assert all("--method eagle2" in c and "--resume" in c for c in calls)
