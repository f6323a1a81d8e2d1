"""The ``coral-bench`` command line: parse, call library functions, print. Nothing else."""

from __future__ import annotations

import click

from coral_bench.cli import analysis
from coral_bench.cli import catalog
from coral_bench.cli import render as reports
from coral_bench.cli import run
from coral_bench.cli import training
from .common import USER_ERRORS, _fail

# Model-related modules are imported inside the commands that need them: `--help`, `suites` and
# `report` stay fast (no torch / transformers import).


class _Group(click.Group):
    """Turns user errors raised anywhere in a command into one clear line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


@click.group(cls=_Group)
@click.version_option(package_name="coral-bench")
def main() -> None:
    """coral-bench: speculative decoding benchmarks and speedup analysis (EAGLE-2, HASS, CORAL)."""


for _command in (run.run, run.merge, catalog.suites, catalog.drafters, catalog.targets, reports.report, reports.check_stale,
                 analysis.profile_command, analysis.estimate_speedup, analysis.replay_command, training.gen_data,
                 training.train, training.train_router_command):
    main.add_command(_command)
