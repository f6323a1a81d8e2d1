"""Progress display: rich's bar on a terminal, plain timed lines in a log (where rich shows nothing)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from coral_bench.run.progress import LineProgress, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def log_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_a_terminal_gets_the_rich_bar_and_a_log_gets_lines():
    assert isinstance(progress_bar(console=Console(file=io.StringIO(), force_terminal=True)), Progress)
    assert isinstance(progress_bar(console=log_console()[0]), LineProgress)


def test_lines_come_at_most_every_interval_with_eta_from_this_sessions_rate():
    console, buffer = log_console()
    clock = FakeClock()
    with progress_bar(console=console, every_s=60, clock=clock) as bar:
        task = bar.add_task("train", total=100, completed=40, info="")  # resumed at 40 of 100
        for step in range(41, 101):
            clock.now += 10
            bar.update(task, completed=step, info=f"loss {1 / step:.3f}")
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 60 * 10 // 60 + 1  # one per minute, then the closing line
    first = lines[0]  # after 60 s: 6 steps done this session → 10 s per step, 54 to go
    assert first.startswith("train: 46/100 (46%)") and "elapsed 0:01:00" in first and "eta 0:09:00" in first
    assert "loss 0.022" in first
    assert lines[-1].startswith("train: 100/100 (100%)") and "elapsed 0:10:00" in lines[-1]


def test_short_work_prints_nothing():
    console, buffer = log_console()
    clock = FakeClock()
    with progress_bar(console=console, every_s=60, clock=clock) as bar:
        task = bar.add_task("replay", total=None)
        for done in range(5):
            clock.now += 1
            bar.update(task, completed=done, total=5)
    assert buffer.getvalue() == ""
