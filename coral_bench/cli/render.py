"""Reports from run directories: ``report`` and ``check-stale``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from coral_bench.cli.common import _fail
from coral_bench.paths import CHECKOUT_ROOT


@click.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.md, report.html and report-figures/ (default: the first run directory).")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path),
              help="Instead of RUN_DIRS: re-render every [[report]] of this TOML manifest (reports/reports.toml).")
def report(run_dirs, out, manifest):
    """Write report.md and a self-contained report.html from run directories (results files only)."""
    from coral_bench.report import render_manifest, write_report

    if manifest is not None and (run_dirs or out is not None):
        _fail("give either RUN_DIRS [--out DIR] or --manifest FILE, not both")
    if manifest is None and not run_dirs:
        _fail("give at least one run directory (or --manifest FILE)")
    for files in render_manifest(manifest) if manifest is not None else (write_report(list(run_dirs), out),):
        click.echo(f"report: {files.markdown}")
        click.echo(f"report: {files.html}")


@click.command("check-stale")
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check every run directory this report manifest names (reports/reports.toml).")
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path),
              help="The git checkout to compare with (default: the one this coral-bench runs from).")
def check_stale(run_dirs, manifest, repo):
    """Did decoder or drafter code change since these runs were made? Exit 1 when any run is stale or
    cannot be checked (one line each), 0 when all are current."""
    from coral_bench.report import manifest_runs
    from coral_bench.rundir.staleness import check_runs

    runs = list(run_dirs) + [r for r in (manifest_runs(manifest) if manifest is not None else ()) if r not in run_dirs]
    if not runs:
        _fail("give at least one run directory (or --manifest FILE)")
    verdicts = check_runs(runs, repo if repo is not None else CHECKOUT_ROOT)
    for verdict in verdicts:
        click.echo(verdict.line)
    if all(v.ok for v in verdicts):
        click.echo(f"check-stale: all {len(verdicts)} run(s) current: no decoder or drafter change since they were made")
        return
    bad = sum(not v.ok for v in verdicts)
    click.echo(f"check-stale: {bad} of {len(verdicts)} run(s) stale or unverifiable: redo them before trusting "
               "the report as current")
    sys.exit(1)
