"""Listings: ``suites``, ``drafters`` and ``targets``."""

from __future__ import annotations

import click
from rich.table import Table

from .common import out


@click.command()
def suites() -> None:
    """List the shipped suites."""
    from coral_bench.run.suites import load_suite, suite_names

    table = Table("suite", "questions", "turns", "max new tokens", "description")
    for name in suite_names():
        s = load_suite(name)
        table.add_row(name, str(len(s.questions)), str(max(len(q.turns) for q in s.questions)),
                      str(s.max_new_tokens), s.description)
    out.print(table)


@click.command()
def drafters() -> None:
    """List the registered drafters and their default trees."""
    from ..drafters.registry import DRAFTERS
    from coral_bench.run.peers import PEERS

    table = Table("drafter", "default tree", "needs checkpoint", "description")
    for name, entry in DRAFTERS.items():
        table.add_row(name, entry.default_tree.describe(), "yes" if entry.needs_checkpoint else "no", entry.description)
    out.print(table)
    out.print("peers: " + ", ".join(f"{k} ({v})" for k, v in PEERS.items()))


@click.command()
def targets() -> None:
    """List the built-in targets (any local HF model directory works too)."""
    from coral_bench.run.targets import TARGETS

    table = Table("target", "description")
    for name, text in TARGETS.items():
        table.add_row(name, text)
    out.print(table)
