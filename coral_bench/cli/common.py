"""Shared by the command modules: the consoles, user-error handling and option helpers."""

from __future__ import annotations

import sys

import click
from rich.console import Console

# Errors that are the user's input, not bugs: one line on stderr, exit status 2, no traceback. Every
# coral-bench error about input (SuiteError, LoadError, TargetError, DrafterError, TreeError,
# MethodError, PeerError, RunDirError, BusyMachineError, ...) subclasses ValueError.
USER_ERRORS = (ValueError, OSError)

out = Console()
err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is the one that matters


def _tree(ctx, param, value):
    from coral_bench.core.tree import TreeError, TreeShape

    if value is None or value == "auto":
        return value
    try:
        return TreeShape.parse(value)
    except TreeError as exc:
        raise click.BadParameter(str(exc)) from None


def _fmt(value, pattern="{:.2f}") -> str:
    return "–" if value is None else pattern.format(value)
