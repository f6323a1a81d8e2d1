"""The whole report: sections in order, rendered to Markdown and to one self-contained HTML file.

Deterministic: every byte comes from the run directories (dates included), never from the clock,
so a report re-renders identically from the same runs.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import figures as fg
from . import measured, model, overview, replays, training, trees
from .blocks import FIGURES_DIR, Figure, Section, inline_html, section_html, section_markdown
from coral_bench.rundir.reader import Run, load_runs

MARKDOWN = "report.md"
HTML = "report.html"


@dataclass(frozen=True)
class Report:
    title: str
    subtitle: str
    sections: tuple[Section, ...]
    footer: Section  # provenance

    @property
    def figures(self) -> tuple[Figure, ...]:
        return tuple(b for s in self.sections for b in s.blocks if isinstance(b, Figure))


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    figures: tuple[Path, ...]


def palette(runs: Sequence[Run]) -> fg.Palette:
    labels: list[str] = []
    for run in runs:
        labels += [d.label for d in run.drafters if d.label not in labels]
    return fg.Palette(tuple(labels))


def build_report(runs: Sequence[Run]) -> Report:
    colours = palette(runs)
    sections = (
        overview.runs_section(runs),
        measured.headline(runs, colours),
        measured.details(runs),
        trees.chosen_trees(runs),
        measured.sample_metrics(runs),
        measured.categories(runs),
        measured.turns(runs),
        measured.acceptance(runs, colours),
        measured.paired_tau(runs),
        replays.replayed(runs),
        measured.time_split(runs),
        model.lm_head(runs),
        model.predicted(runs, colours),
        model.verification_cost(runs),
        training.training(runs),
        overview.published(),
        overview.missing(runs),
    )
    return Report(overview.title(runs), overview.subtitle(runs), tuple(s for s in sections if s is not None),
                  overview.provenance(runs))


def to_markdown(report: Report) -> str:
    parts = [f"# {report.title}", report.subtitle]
    parts += [section_markdown(s) for s in report.sections]
    parts += ["---", section_markdown(report.footer)]
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1a1a1a; background: #ffffff; line-height: 1.45; }
header, main, footer { max-width: 1100px; margin: 0 auto; padding: 0 1.2rem; }
header { padding-top: 1rem; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2rem; }
h3 { font-size: 1.05rem; }
nav ul { columns: 2; font-size: 0.9rem; }
div.table { overflow-x: auto; margin: 0.8rem 0; }
table.data { border-collapse: collapse; font-size: 0.85rem; font-variant-numeric: tabular-nums; }
table.data th, table.data td { border: 1px solid #d0d0d0; padding: 0.2rem 0.5rem; text-align: left;
                               vertical-align: top; }
table.data .num { text-align: right; white-space: nowrap; }
table.data caption { text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
table.data thead th { background: #f0f0f0; }
table.data tbody tr:nth-child(even) { background: #fafafa; }
p.note { font-size: 0.85rem; color: #444; }
p.warning { background: #fff4e0; border-left: 4px solid #D55E00; padding: 0.4rem 0.7rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85rem; color: #444; }
footer { border-top: 2px solid #999; margin-top: 2.5rem; padding-bottom: 2rem; font-size: 0.9rem; }
code { font-size: 0.9em; background: #f3f3f3; padding: 0 0.2em; }
""".strip()


def to_html(report: Report) -> str:
    toc = "\n".join(f'<li><a href="#{s.key}">{inline_html(s.title)}</a></li>'
                    for s in (*report.sections, report.footer))
    body = "\n".join(section_html(s) for s in report.sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(report.title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        f"<header>\n<h1>{html.escape(report.title)}</h1>\n<p>{inline_html(report.subtitle)}</p>\n"
        f"<nav>\n<ul>\n{toc}\n</ul>\n</nav>\n</header>\n"
        f"<main>\n{body}\n</main>\n{section_html(report.footer, 'footer')}\n</body>\n</html>\n"
    )


def write_report(run_dirs: Sequence[Path], out: Path | None = None) -> ReportFiles:
    """Load ``run_dirs`` and write report.md, report.html and report-figures/*.svg into ``out``
    (default: the first run directory); SVGs in report-figures/ that this report does not draw are
    removed, so a re-render leaves exactly its own files. Raises :class:`ReportError` for unusable input."""
    runs = load_runs([Path(p) for p in run_dirs])
    report = build_report(runs)
    out = Path(out) if out is not None else runs[0].path
    figures_dir = out / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for figure in report.figures:
        path = figures_dir / f"{figure.name}.svg"
        path.write_text(figure.svg, encoding="utf-8")
        written.append(path)
    for old in sorted(figures_dir.glob("*.svg")):  # a figure an earlier render wrote and this one does not
        if old not in written:
            old.unlink()
    (out / MARKDOWN).write_text(to_markdown(report), encoding="utf-8")
    (out / HTML).write_text(to_html(report), encoding="utf-8")
    return ReportFiles(out / MARKDOWN, out / HTML, tuple(written))
