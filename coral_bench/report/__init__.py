"""``coral-bench report``: run directories → report.md and a self-contained report.html.

Reads only the result files (results.json, samples.jsonl, cycles.jsonl); never imports torch or
loads a model, so it runs in seconds anywhere. Modules:

- ``run``: the frozen :class:`Run` loaded from a directory, and :class:`ReportError`;
- ``blocks``: text / table / figure values and their Markdown and HTML forms;
- ``figures``: matplotlib figures as deterministic SVG;
- ``overview``, ``measured``, ``model``: one pure function per report section;
- ``published``: the published reference numbers of docs/methods.md §9;
- ``document``: section order, the two output formats, writing the files;
- ``manifest``: the committed reports as data (reports/reports.toml) and re-rendering them.
"""

from .document import HTML, MARKDOWN, Report, ReportFiles, build_report, to_html, to_markdown, write_report
from .manifest import ManifestEntry, load_manifest, manifest_runs, render_manifest
from coral_bench.rundir.reader import SUPPORTED_SCHEMA, ReportError, Run, load_run, load_runs

__all__ = ["HTML", "MARKDOWN", "ManifestEntry", "Report", "ReportError", "ReportFiles", "Run", "SUPPORTED_SCHEMA",
           "build_report", "load_manifest", "load_run", "load_runs", "manifest_runs", "render_manifest", "to_html",
           "to_markdown", "write_report"]
