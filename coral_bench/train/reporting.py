"""Training progress: the step and evaluation records (the lines of train-log.jsonl) and the
reporters that display them (a rich progress bar, or nothing on processes other than the main one).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class StepLog:
    """One optimizer step (a line of train-log.jsonl)."""

    step: int  # optimizer steps done, 1-based
    epoch: int
    lr: float
    loss: float
    terms: dict[str, float]  # part name → global mean, e.g. "regression/1", "csra/1-2"
    slots: int  # drafter slots (tokens) in this step's global batch
    tokens: int  # cumulative slots trained on
    tokens_per_s: float
    elapsed_s: float  # training wall time so far (across resumptions)
    total_steps: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": "step", **asdict(self)}


@dataclass(frozen=True)
class EvalResult:
    """Held-out metrics on the eval split."""

    step: int
    epoch: int
    loss: float
    terms: dict[str, float]
    accuracy: tuple[float, ...]  # [n] top-1 agreement with the target's argmax at depth j (slots t ≥ j − 1)
    slots: int

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["accuracy"] = list(self.accuracy)
        return {"kind": "eval", **body}


class Reporter(Protocol):
    def start(self, total_steps: int, done_steps: int, description: str) -> None: ...
    def step(self, log: StepLog) -> None: ...
    def evaluated(self, result: EvalResult) -> None: ...
    def close(self) -> None: ...


class NullReporter:
    def start(self, total_steps: int, done_steps: int, description: str) -> None:
        pass

    def step(self, log: StepLog) -> None:
        pass

    def evaluated(self, result: EvalResult) -> None:
        pass

    def close(self) -> None:
        pass


def _term_summary(terms: dict[str, float]) -> dict[str, float]:
    """Mean of each term family over steps/pairs (for one-line displays)."""
    groups: dict[str, list[float]] = {}
    for name, value in terms.items():
        if not math.isnan(value):
            groups.setdefault(name.split("/")[0], []).append(value)
    return {k: sum(v) / len(v) for k, v in groups.items()}


class RichReporter:
    """A rich progress bar: loss terms, tokens/s, elapsed and ETA (main process only)."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._bar = None
        self._task = None

    def start(self, total_steps: int, done_steps: int, description: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from coral_bench.run.progress import progress_bar

        self._bar = progress_bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), console=self.console)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total_steps, completed=done_steps, info="")

    def step(self, log: StepLog) -> None:
        parts = [f"loss {log.loss:.4g}"] + [f"{k} {v:.4g}" for k, v in _term_summary(log.terms).items()]
        parts.append(f"{log.tokens_per_s:,.0f} tok/s")
        self._bar.update(self._task, completed=log.step, info=" · ".join(parts))

    def evaluated(self, result: EvalResult) -> None:
        acc = " ".join(f"{a:.3f}" for a in result.accuracy)
        self.console.print(f"eval @ step {result.step} (epoch {result.epoch + 1}): loss {result.loss:.4g}, "
                           f"top-1 by depth {acc}", highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
