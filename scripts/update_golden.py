"""Rewrite the golden report files that tests/test_report.py compares against, from the fixture runs.

An explicit step after an intended change to the report's Markdown (``make update-golden``); the
tests only compare, so a failing comparison can never rewrite what it checks. Review the diff.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from coral_bench.report import write_report

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "report"
GOLDEN = {  # golden file → the fixture runs it renders, in report order
    "mtbench4.md": ("mtbench4",),
    "three-runs.md": ("mtbench4", "one-question", "no-drafters"),
}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, runs in GOLDEN.items():
            files = write_report([FIXTURES / r for r in runs], Path(tmp) / name)
            target = FIXTURES / "golden" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(files.markdown.read_text())
            print(f"wrote {target.relative_to(FIXTURES.parent.parent.parent)}")


if __name__ == "__main__":
    main()
