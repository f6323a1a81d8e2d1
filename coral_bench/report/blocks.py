"""Report content as values (text, bullet lists, tables, figures) and their Markdown / HTML forms.

Sections build blocks; this module alone decides how a block looks in each format, so the two
formats always say the same thing. Inline markup in text: ``**bold**`` and ```code```. Tables are
formatted here rather than with pandas: ``to_markdown`` needs tabulate (not a dependency) and
``to_html`` cannot right-align numeric columns cell by cell.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass

DASH = "–"


@dataclass(frozen=True)
class Text:
    text: str
    style: str = "p"  # "p", "note" (small print) or "warning"


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Heading:
    text: str  # a sub-heading inside a section


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]  # [rows][columns], already formatted
    caption: str = ""

    def __post_init__(self):
        if any(len(r) != len(self.columns) for r in self.rows):
            raise ValueError(f"table {self.caption!r}: every row needs {len(self.columns)} cells")


@dataclass(frozen=True)
class Figure:
    name: str  # file stem: report-figures/<name>.svg
    caption: str
    svg: str


Block = Text | Bullets | Heading | Table | Figure


@dataclass(frozen=True)
class Section:
    key: str  # HTML id
    title: str
    blocks: tuple[Block, ...]


FIGURES_DIR = "report-figures"


# ---------------------------------------------------------------------------------------------
# number formatting (one place, so tables agree)


def num(value: float | None, digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def times(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}×"


def pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.0%}"


def ms(seconds: float | None, digits: int = 2) -> str:
    return DASH if seconds is None else f"{seconds * 1e3:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_cell(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


_NUMERIC = re.compile(r"^[-+]?(\d|–$)")


def numeric_columns(table: Table) -> tuple[bool, ...]:
    """Columns whose cells all read as numbers (or –) are right-aligned; the first column never is."""
    return tuple(i > 0 and bool(table.rows) and all(_NUMERIC.match(r[i]) for r in table.rows)
                 for i in range(len(table.columns)))


def markdown_table(table: Table) -> str:
    """A GitHub-flavoured pipe table, columns padded; numeric columns right-aligned."""
    cells = [[_md_cell(c) for c in table.columns]] + [[_md_cell(c) for c in r] for r in table.rows]
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(len(table.columns))]
    right = numeric_columns(table)

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if r else ("-" * w) for w, r in zip(widths, right)) + " |"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def block_markdown(block: Block) -> str:
    if isinstance(block, Text):
        if block.style == "warning":
            return f"> **Warning:** {block.text}"
        return f"_{block.text}_" if block.style == "note" else block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Heading):
        return f"### {block.text}"
    if isinstance(block, Table):
        return (f"**{block.caption}**\n\n" if block.caption else "") + markdown_table(block)
    return f"![{block.caption}]({FIGURES_DIR}/{block.name}.svg)\n\n_Figure: {block.caption}_"


def section_markdown(section: Section) -> str:
    return "\n\n".join([f"## {section.title}", *(block_markdown(b) for b in section.blocks)])


# ---------------------------------------------------------------------------------------------
# HTML


def inline_html(text: str) -> str:
    """Escape, then turn ``**bold**`` and ```code``` into tags."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


NUM = ' class="num"'


def html_table(table: Table) -> str:
    right = numeric_columns(table)

    def cells(row: tuple[str, ...], tag: str) -> str:
        return "".join(f"<{tag}{NUM if r else ''}>{html.escape(c)}</{tag}>" for c, r in zip(row, right))

    body = "\n".join(f"<tr>{cells(r, 'td')}</tr>" for r in table.rows)
    caption = f"<caption>{inline_html(table.caption)}</caption>\n" if table.caption else ""
    return (f'<div class="table">\n<table class="data">\n{caption}<thead>\n<tr>{cells(table.columns, "th")}</tr>\n'
            f"</thead>\n<tbody>\n{body}\n</tbody>\n</table>\n</div>")


def block_html(block: Block) -> str:
    if isinstance(block, Text):
        cls = {"note": ' class="note"', "warning": ' class="warning"'}.get(block.style, "")
        prefix = "<strong>Warning:</strong> " if block.style == "warning" else ""
        return f"<p{cls}>{prefix}{inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{inline_html(i)}</li>" for i in block.items) + "\n</ul>"
    if isinstance(block, Heading):
        return f"<h3>{inline_html(block.text)}</h3>"
    if isinstance(block, Table):
        return html_table(block)
    data = base64.b64encode(block.svg.encode("utf-8")).decode("ascii")
    return (f'<figure id="fig-{block.name}">\n<img src="data:image/svg+xml;base64,{data}" '
            f'alt="{html.escape(block.caption)}">\n<figcaption>{inline_html(block.caption)}</figcaption>\n</figure>')


def section_html(section: Section, tag: str = "section") -> str:
    body = "\n".join(block_html(b) for b in section.blocks)
    return f'<{tag} id="{section.key}">\n<h2>{inline_html(section.title)}</h2>\n{body}\n</{tag}>'
