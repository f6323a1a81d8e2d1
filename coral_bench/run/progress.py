"""Progress display for long work: a rich bar on a terminal, plain lines in a log.

Long jobs (training, data generation, benchmark runs) are meant to run in the background with their
output in a file, where rich's live bar shows nothing until the end. :func:`progress_bar` gives the
rich bar when the console is a terminal and otherwise a :class:`LineProgress` with the same small
API (``add_task``, ``update``, ``start``/``stop``, a context manager) that writes one line at most
every ``every_s`` seconds — done/total, elapsed, ETA and the task's fields — and a last line when the
work took that long. Short work prints nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Console
from rich.progress import Progress, ProgressColumn

LINE_EVERY_S = 60.0


def progress_bar(*columns: ProgressColumn | str, console: Console, transient: bool = False,
                 every_s: float = LINE_EVERY_S, clock: Callable[[], float] = time.monotonic) -> Progress | "LineProgress":
    """A rich ``Progress`` with ``columns`` on a terminal, else a :class:`LineProgress` on ``console``."""
    if console.is_terminal:
        return Progress(*columns, console=console, transient=transient)
    return LineProgress(console, every_s, clock)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    fields: dict[str, Any]
    started: float
    first_completed: float  # progress already done when the task began (a resumed job): not in the rate


@dataclass
class LineProgress:
    """Plain progress lines for consoles that are not terminals (logs, CI)."""

    console: Console
    every_s: float = LINE_EVERY_S
    clock: Callable[[], float] = time.monotonic
    _tasks: list[_Task] = field(default_factory=list)
    _last_line: float | None = None
    _started: float | None = None

    def start(self) -> None:
        self._started = self.clock()
        self._last_line = self._started

    def stop(self) -> None:
        if self._started is not None and self.clock() - self._started >= self.every_s:
            for task in self._tasks:
                self.console.print(self.line(task), highlight=False)
        self._started = None

    def __enter__(self) -> "LineProgress":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        self._tasks.append(_Task(description, total, completed, dict(fields), self.clock(), completed))
        return len(self._tasks) - 1

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, advance: float | None = None, **fields: Any) -> None:
        task = self._tasks[task_id]
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description
        if advance is not None:
            task.completed += advance
        if completed is not None:
            task.completed = completed
        task.fields.update(fields)
        now = self.clock()
        if self._last_line is None:
            self._last_line = now
        if now - self._last_line >= self.every_s:
            self._last_line = now
            self.console.print(self.line(task), highlight=False)

    def line(self, task: _Task) -> str:
        """``description: done/total (pct) · elapsed h:mm:ss · eta h:mm:ss · fields``."""
        elapsed = self.clock() - task.started
        done = f"{task.completed:,.0f}"
        parts = [f"{task.description}: {done}"]
        if task.total:
            parts[0] += f"/{task.total:,.0f} ({task.completed / task.total:.0%})"
        parts.append(f"elapsed {_duration(elapsed)}")
        rate = (task.completed - task.first_completed) / elapsed if elapsed > 0 else 0.0
        if task.total and rate > 0:
            parts.append(f"eta {_duration(max(task.total - task.completed, 0) / rate)}")
        parts.extend(str(v) for v in task.fields.values() if v not in (None, ""))
        return " · ".join(parts)
