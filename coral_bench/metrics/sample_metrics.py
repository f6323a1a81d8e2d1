"""Per-sample metrics declared once: each entry computes one number from a method's samples, and
``results.json`` (``sample_metrics`` of every method record) and the reports (the "Per-sample
metrics" table) pick up every entry without further code (docs/extending.md, "A per-sample metric").

A metric reads only :class:`~coral_bench.core.records.SampleRecord` fields, so it can be computed again
from ``samples.jsonl`` of any finished run. ``None`` means "not measurable for this method" (peers
do not time their prefill, for example), never zero.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from coral_bench.core.records import SampleRecord


@dataclass(frozen=True)
class SampleMetric:
    name: str  # key in results.json's sample_metrics
    description: str  # one line, shown in reports
    unit: str  # "fraction", "s" or "tokens": how reports format it
    compute: Callable[[Sequence[SampleRecord]], float | None]


def _prefill_share(samples: Sequence[SampleRecord]) -> float | None:
    if not samples or any(s.prefill_s is None for s in samples):
        return None
    wall = sum(s.wall_s for s in samples)
    return sum(s.prefill_s for s in samples) / wall if wall > 0 else None


def _median_prefill(samples: Sequence[SampleRecord]) -> float | None:
    if not samples or any(s.prefill_s is None for s in samples):
        return None
    return float(statistics.median(s.prefill_s for s in samples))


def _mean_prompt_tokens(samples: Sequence[SampleRecord]) -> float | None:
    return float(statistics.mean(s.prompt_tokens for s in samples)) if samples else None


SAMPLE_METRICS: dict[str, SampleMetric] = {m.name: m for m in (
    SampleMetric("prefill_share", "share of wall time spent in the prompt's prefill", "fraction", _prefill_share),
    SampleMetric("median_prefill_s", "median prefill time per sample (time to the first token)", "s", _median_prefill),
    SampleMetric("mean_prompt_tokens", "mean prompt length in tokens", "tokens", _mean_prompt_tokens),
)}


def sample_metrics(samples: Sequence[SampleRecord]) -> dict[str, float | None]:
    """Every registered metric over one method's samples."""
    return {name: metric.compute(samples) for name, metric in SAMPLE_METRICS.items()}
