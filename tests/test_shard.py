"""Sharded evaluation: ``run --shard I/N`` then ``merge`` gives the unsharded run's samples and every
statistic that does not depend on the clock (outputs, acceptance, equality verdicts, noise bounds);
timings are measured anew by each shard, as by any run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from coral_bench.rundir import layout as rd
from coral_bench.rundir.layout import RunDirError
from coral_bench.run.merge import merge_shards
from coral_bench.run.runner import RunConfig, run_suite
from coral_bench.run.specs import DrafterSpec
from coral_bench.run.suites import SuiteError, load_suite, shard_of

UNTIMED = ("samples", "new_tokens", "cycles", "tau_pooled", "reach_by_depth", "equality", "tree")


def _config(target: str, dtype: str, drafters: tuple[str, ...], limit: int = 3, **extra) -> RunConfig:
    return RunConfig(suite="mtbench", target=target, dtype=dtype, device="cpu", threads=1, limit=limit, max_new_tokens=12,
                     drafters=tuple(DrafterSpec.parse(d) for d in drafters), peers=("none",), **extra)


def _samples(run_dir):
    return {r.key: (r.output_ids, r.accepted, r.stop_reason, r.category) for r in rd.read_samples(run_dir)}


@pytest.mark.parametrize("target,dtype,drafters,questions", [
    ("tiny-random", "float32", ("prompt-lookup", "eagle3", "oracle"), 3),
    pytest.param("smollm2-135m", "bfloat16", ("coral-router",), 2, marks=pytest.mark.long),
], ids=["tiny", "embedded"])
def test_sharded_then_merged_equals_unsharded(tmp_path, target, dtype, drafters, questions):
    whole = run_suite(_config(target, dtype, drafters, questions), tmp_path / "whole")
    for i in range(2):
        run_suite(_config(target, dtype, drafters, questions, shard=(i, 2)), tmp_path / f"shard{i}")
    merged = merge_shards([tmp_path / "shard1", tmp_path / "shard0"], tmp_path / "merged", "coral-bench merge")
    assert merged == json.loads((tmp_path / "merged" / rd.RESULTS).read_text())
    assert _samples(tmp_path / "merged") == _samples(tmp_path / "whole")
    assert len(_samples(tmp_path / "whole")) == (1 + len(drafters)) * questions * 2  # methods × questions × turns
    assert merged["config"]["questions"] == whole["config"]["questions"] == questions
    assert merged["config"]["shard"] is None
    for label in drafters:
        for key in UNTIMED:
            assert merged["drafters"][label][key] == whole["drafters"][label][key], (label, key)
        assert merged["drafters"][label]["speedup"] > 0
    assert json.loads((tmp_path / "merged" / "noise.json").read_text()) == \
        json.loads((tmp_path / "whole" / "noise.json").read_text())
    sessions = merged["provenance"]["sessions"]
    assert sum(s.get("samples_added") or 0 for s in sessions) == len(_samples(tmp_path / "whole"))


def test_merge_refuses_what_is_not_one_complete_set_of_shards(tmp_path):
    drafters = ("prompt-lookup",)
    for i in range(3):
        run_suite(_config("tiny-random", "float32", drafters, shard=(i, 3)), tmp_path / f"s{i}")
    other = replace(_config("tiny-random", "float32", drafters, shard=(1, 3)), max_new_tokens=8)
    run_suite(other, tmp_path / "other")
    run_suite(_config("tiny-random", "float32", drafters), tmp_path / "plain")
    with pytest.raises(RunDirError, match="must be 0/N"):
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m1")
    with pytest.raises(RunDirError, match="shard of another run .* max_new_tokens"):
        merge_shards([tmp_path / "s0", tmp_path / "other", tmp_path / "s2"], tmp_path / "m2")
    with pytest.raises(RunDirError, match="is not a shard"):
        merge_shards([tmp_path / "plain"], tmp_path / "m3")
    for m in ("m1", "m2", "m3"):
        assert not (tmp_path / m).exists()  # nothing half-merged left behind
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        merge_shards([tmp_path / f"s{i}" for i in range(3)], tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_shards_cover_the_suite_once():
    suite = load_suite("mtbench")
    ids = [q.question_id for i in range(3) for q in shard_of(suite, i, 3).questions]
    assert sorted(ids) == sorted(q.question_id for q in suite.questions)
    with pytest.raises(SuiteError, match="no questions"):
        shard_of(suite, len(suite.questions), len(suite.questions) + 1)
    with pytest.raises(SuiteError, match="0 <= I < N"):
        shard_of(suite, 3, 3)
