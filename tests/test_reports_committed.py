"""The committed reports (reports/reports.toml): `make reports` reproduces them byte-for-byte from the
committed runs, their numbers are the runs', the README quotes them verbatim, and bad manifests fail
with one line.

When rendering changes on purpose, run `make reports` (or `python -m coral_bench report --manifest
reports/reports.toml`) and commit the re-rendered files with the change.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from coral_bench.report import ReportError, load_manifest, manifest_runs, render_manifest

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"
MANIFEST = REPORTS / "reports.toml"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rerendered(tmp_path_factory) -> Path:
    """A copy of reports/ re-rendered by `coral-bench report --manifest` (what `make reports` runs),
    with a stray figure left from an earlier render that the re-render must remove."""
    from coral_bench.cli import main

    copy = tmp_path_factory.mktemp("reports") / "reports"
    shutil.copytree(REPORTS, copy)
    for entry in load_manifest(copy / MANIFEST.name):
        (entry.out / "report-figures" / "stray-old-figure.svg").write_text("<svg/>")
    result = CliRunner().invoke(main, ["report", "--manifest", str(copy / MANIFEST.name)])
    assert result.exit_code == 0, result.output
    return copy


def test_manifest_names_existing_reports_and_runs():
    entries = load_manifest(MANIFEST)
    assert [e.out.name for e in entries] == ["preview-cpu", "reference-cpu", "objectives-cpu"]
    assert all((e.out / "report.md").is_file() and (e.out / "report.html").is_file() for e in entries)
    assert all((run / "results.json").is_file() for run in manifest_runs(MANIFEST))


def test_make_reports_reproduces_the_committed_files_byte_for_byte(rerendered):
    for entry in load_manifest(MANIFEST):
        committed = _files(entry.out)
        fresh = _files(rerendered / entry.out.relative_to(REPORTS))
        assert sorted(fresh) == sorted(committed), f"{entry.out}: the re-render writes other files"
        for name, data in committed.items():
            assert fresh[name] == data, (f"{entry.out / name} differs from a fresh render of its runs: run "
                                         "`make reports` and commit the result if the change is intended")


def test_committed_runs_are_not_touched_by_rendering(rerendered):
    for run in manifest_runs(MANIFEST):
        assert _files(rerendered / run.relative_to(REPORTS)) == _files(run), run


def test_committed_report_numbers_are_the_runs_numbers():
    for entry in load_manifest(MANIFEST):
        md = (entry.out / "report.md").read_text(encoding="utf-8")
        for run in entry.runs:
            results = json.loads((run / "results.json").read_text(encoding="utf-8"))
            for label, rec in results["drafters"].items():
                lo, hi = rec["speedup_ci95"]
                assert f"{rec['speedup']:.2f}× [{lo:.2f}, {hi:.2f}]" in md, (run.name, label)
                assert f"{rec['tau_pooled']:.2f}" in md, (run.name, label)
            assert f"{results['baseline']['tokens_per_s']:.1f}" in md, run.name
            assert results["provenance"]["date"] in md and results["provenance"]["git_hash"] in md


def test_readme_quotes_the_committed_report_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Reports\n", 1)[1].split("\n## ", 1)[0]
    assert "reports/reference-cpu/report.html" in section
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) >= 4, "the README's Reports section has no table"
    md = (REPORTS / "reference-cpu" / "report.md").read_text(encoding="utf-8")
    for row in rows:
        assert row in md, f"README row not in reports/reference-cpu/report.md: {row}"


# ---------------------------------------------------------------------------------------------
# bad manifests: one line naming the file


@pytest.mark.parametrize("text, message", [
    ("[[report]]\nout = 'x'\nruns = [", "is not valid TOML"),
    ("title = 'no reports'\n", "has no \\[\\[report\\]\\] entries"),
    ("[[report]]\nruns = ['a']\n", "needs out = "),
    ("[[report]]\nout = 'x'\nruns = []\n", "needs runs = "),
    ("[[report]]\nout = 'x'\nruns = ['a']\nfigures = false\n", "unknown key\\(s\\) figures"),
    ("[[report]]\nout = 'x'\nruns = ['a']\n[[report]]\nout = 'x'\nruns = ['b']\n", "more than one"),
])
def test_bad_manifest_is_one_line(tmp_path, text, message):
    manifest = tmp_path / "reports.toml"
    manifest.write_text(text)
    with pytest.raises(ReportError, match=message) as caught:
        load_manifest(manifest)
    assert "\n" not in str(caught.value) and str(manifest) in str(caught.value)


def test_cli_manifest_errors_are_one_line(tmp_path):
    from coral_bench.cli import main

    missing = CliRunner().invoke(main, ["report", "--manifest", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "cannot read the report manifest" in missing.output
    both = CliRunner().invoke(main, ["report", "--manifest", str(MANIFEST), str(tmp_path)])
    assert both.exit_code == 2 and "not both" in both.output
    neither = CliRunner().invoke(main, ["report"])
    assert neither.exit_code == 2 and "at least one run directory" in neither.output
    for result in (missing, both, neither):
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_manifest_run_that_is_missing_fails_with_its_path(tmp_path):
    manifest = tmp_path / "reports.toml"
    manifest.write_text("[[report]]\nout = 'out'\nruns = ['runs/nope']\n")
    with pytest.raises(ReportError, match=re.escape(str(tmp_path / "runs" / "nope")) + " does not exist"):
        render_manifest(manifest)
