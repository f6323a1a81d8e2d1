"""A per-sample metric is declared once (metrics/sample_metrics.py) and reaches results.json and the
report without further code; runs recorded before the metrics existed render without the section."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from coral_bench.metrics import sample_metrics as sm
from coral_bench.metrics.stats import summarize
from coral_bench.report import write_report
from coral_bench.rundir import layout as rd
from coral_bench.rundir.reader import load_run

MTBENCH4 = Path(__file__).parent / "fixtures" / "report" / "mtbench4"


def _longest(samples):
    return float(max(s.new_tokens for s in samples))


def test_registered_metrics_are_computed_from_the_samples():
    samples = rd.read_samples(MTBENCH4)
    vanilla = [s for s in samples if s.method == "vanilla"]
    max_new = json.loads((MTBENCH4 / rd.CONFIG).read_text())["max_new_tokens"]
    got = summarize(vanilla, max_new).to_json()["sample_metrics"]
    assert set(got) == set(sm.SAMPLE_METRICS)
    wall, prefill = sum(s.wall_s for s in vanilla), sum(s.prefill_s for s in vanilla)
    assert got["prefill_share"] == pytest.approx(prefill / wall)
    assert got["mean_prompt_tokens"] == pytest.approx(sum(s.prompt_tokens for s in vanilla) / len(vanilla))


def test_an_untimed_prefill_is_none_not_zero():
    samples = [s.__class__(**{**s.to_json(), "prefill_s": None}) for s in rd.read_samples(MTBENCH4)[:2]]
    assert sm.SAMPLE_METRICS["prefill_share"].compute(samples) is None
    assert sm.SAMPLE_METRICS["median_prefill_s"].compute(samples) is None


def test_a_new_metric_reaches_results_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setitem(sm.SAMPLE_METRICS, "longest_output",
                        sm.SampleMetric("longest_output", "the longest answer in tokens", "tokens", _longest))
    run = shutil.copytree(MTBENCH4, tmp_path / "run")
    samples = rd.read_samples(run)
    data = json.loads((run / rd.RESULTS).read_text())
    records = [("baseline", "vanilla", data["baseline"])]
    records += [("drafter", label, entry) for label, entry in data["drafters"].items()]
    for _, label, entry in records:  # what build_results writes: summarize(...).to_json() per method
        own = [s for s in samples if s.method == label]
        entry["sample_metrics"] = summarize(own, data["config"]["max_new_tokens"]).to_json()["sample_metrics"]
    (run / rd.RESULTS).write_text(json.dumps(data))
    loaded = load_run(run)
    longest = max(s.new_tokens for s in samples if s.method == "vanilla")
    assert loaded.baseline.sample_metrics["longest_output"] == longest
    md = write_report([run], tmp_path / "out").markdown.read_text()
    assert "## Per-sample metrics" in md and "longest_output" in md and "the longest answer in tokens" in md


def test_runs_without_sample_metrics_render_without_the_section(tmp_path):
    md = write_report([MTBENCH4], tmp_path / "out").markdown.read_text()
    assert "Per-sample metrics" not in md
