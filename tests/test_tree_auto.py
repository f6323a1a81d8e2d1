"""--tree auto (the run's default): the argmax of the predicted speedup on a fake cost table; the choice is
cached per machine fingerprint and drafter (hit, mismatch, corrupt file, busy machine, --retune); a tiny CLI
run without --tree records and uses it; estimate-speedup predicts oracle and early-exit drafters."""

import json

import pytest
from conftest import assert_speedup_model_adds_up
from click.testing import CliRunner

from coral_bench.cli import main
from coral_bench.core.tree import TreeShape
import torch

from coral_bench.core.clock import Clock
from coral_bench.costmodel import tree_search
from coral_bench.costmodel.machine import cpu_model_and_flags, fingerprint_key, machine_fingerprint
from coral_bench.costmodel.tree_cache import TREE_CACHE_ENV, TreeCache
from coral_bench.costmodel.tree_search import AutoSettings, CandidateScore, TreeChoice, choose
from coral_bench.run.specs import DrafterSpec
from coral_bench.run.suites import load_suite
from coral_bench.run.targets import load_target

TREES = [TreeShape.parse(t) for t in ("top_k=2,depth=2,total_tokens=8", "top_k=4,depth=3,total_tokens=16",
                                      "top_k=4,depth=2,total_tokens=8", "top_k=8,depth=5,total_tokens=32")]


def _table(values):
    table = dict(zip((t.describe() for t in TREES), values))
    return lambda tree: CandidateScore(tree, table[tree.describe()], 2.0)


def test_choose_takes_the_argmax_of_the_predicted_speedup():
    tree, scores = choose(TREES, _table([1.1, 1.7, 1.3, None]))
    assert tree.describe() == "top_k=4,depth=3,total_tokens=16"
    assert [s.speedup for s in scores] == [1.1, 1.7, 1.3, None]  # every candidate kept, unpredictable ones too
    tie, _ = choose(TREES, _table([1.5, 1.5, 1.5, 1.4]))
    assert tie.describe() == "top_k=2,depth=2,total_tokens=8"  # ties: fewer nodes, then grid order
    with pytest.raises(ValueError, match="could not predict"):
        choose(TREES, _table([None] * 4))


def test_grid_candidates_and_the_recorded_choice_round_trip():
    grid = AutoSettings(top_k=(2, 4), depth=(2,), total_tokens=(8, 16), chains=(3,))
    # the chains first; k + depth·k² candidates: 2 + 8 = 10 (≥ 7, < 15), 4 + 32 = 36
    assert [t.describe() for t in grid.candidates()] == ["chain:3", "top_k=2,depth=2,total_tokens=8",
                                                         "top_k=4,depth=2,total_tokens=8",
                                                         "top_k=4,depth=2,total_tokens=16"]
    tree, scores = choose(TREES, _table([1.1, 1.7, 1.3, 0.9]))
    choice = TreeChoice("eagle", tree, scores, {"settings": grid.to_json()})
    assert TreeChoice.from_json("eagle", json.loads(json.dumps(choice.to_json()))) == choice
    with pytest.raises(ValueError):
        AutoSettings(questions=0)


TINY = ["--target", "tiny-random", "--dtype", "float64", "--threads", "1"]


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    """A run without --tree (so auto, the default), with a tree cache of its own."""
    out = tmp_path_factory.mktemp("runs") / "run"
    args = ["run", "--suite", "mtbench", *TINY, "--limit", "1", "--max-new-tokens", "12",
            "--drafter", "eagle", "--drafter", "oracle", "--drafter", "early-exit", "--out", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CORAL_BENCH_TREE")
        patch.setenv(TREE_CACHE_ENV, str(tmp_path_factory.mktemp("tree-cache")))
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        yield out, args


def _auto(out):
    return json.loads((out / "results.json").read_text())["config"]["tree_auto"]


def test_cli_tree_auto_is_the_default_records_and_uses_the_argmax(auto_run):
    out, args = auto_run
    results = json.loads((out / "results.json").read_text())
    auto = results["config"]["tree_auto"]
    assert set(auto["drafters"]) == {"eagle"}  # oracle and early-exit keep their default trees
    choice = auto["drafters"]["eagle"]
    best = max((g for g in choice["grid"] if g["speedup_predicted"] is not None),
               key=lambda g: g["speedup_predicted"])
    assert choice["tree"] == best["tree"] == results["drafters"]["eagle"]["tree"]
    assert choice["speedup_predicted"] == best["speedup_predicted"] and choice["tau_dev"] == best["tau"]
    assert len(choice["grid"]) == len(AutoSettings().candidates()) and choice["dev_prompts"] == 4
    assert choice["cache"]["status"] == "measured" and choice["cache"]["machine"]["dtype"] == "float64"
    assert results["drafters"]["oracle"]["tree"] == "top_k=4,depth=3,total_tokens=16"
    assert all(row["equal_to_vanilla"] == 1.0 for row in results["drafters"].values())  # greedy output = vanilla
    again = CliRunner().invoke(main, [*args, "--resume"], catch_exceptions=False)  # keeps the recorded choice
    assert again.exit_code == 0, again.output


def test_a_second_run_takes_the_cached_choice_and_retune_or_fixed_do_not(auto_run, tmp_path, monkeypatch):
    out, args = auto_run
    first = _auto(out)["drafters"]["eagle"]
    monkeypatch.setattr(tree_search, "auto_tree", _must_not_measure)  # a hit measures nothing
    second = tmp_path / "second"
    result = CliRunner().invoke(main, [*args[:-1], str(second)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    hit = _auto(second)["drafters"]["eagle"]
    assert hit["cache"]["status"] == "hit" and hit["cache"]["measured_at"] == first["cache"]["measured_at"]
    assert hit["tree"] == first["tree"] and hit["grid"] == first["grid"]
    retuned = tmp_path / "retuned"
    with pytest.raises(AssertionError, match="measured although cached"):
        CliRunner().invoke(main, [*args[:-1], str(retuned), "--retune"], catch_exceptions=False)
    fixed = tmp_path / "fixed"
    result = CliRunner().invoke(main, [*args[:-1], str(fixed), "--tree", "fixed"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = json.loads((fixed / "results.json").read_text())
    assert results["config"]["tree_auto"] is None
    assert results["drafters"]["eagle"]["tree"] == "top_k=4,depth=3,total_tokens=16"  # the registry's


def _must_not_measure(*args, **kwargs):
    raise AssertionError("measured although cached")


SMALL = AutoSettings(top_k=(2,), depth=(2,), total_tokens=(6,), chains=(2,), questions=1, max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny_loaded():
    return load_target("tiny-random", "float64")


def _choose(loaded, cache, retune=False, drafter="eagle"):
    chooser = tree_search.tree_chooser([DrafterSpec.parse(drafter)], SMALL, 0, cache, retune)
    return chooser(loaded, Clock(loaded.target.device), load_suite("mtbench"))[drafter].record


def test_the_cache_answers_only_for_the_same_machine_drafter_and_settings(tiny_loaded, tmp_path, monkeypatch):
    cache = TreeCache(tmp_path)
    measured = _choose(tiny_loaded, cache)
    files = list(tmp_path.rglob("*.json"))
    assert measured["cache"]["status"] == "measured" and len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["machine"]["threads"] == torch.get_num_threads() and stored["drafter"]["name"] == "eagle"
    assert _choose(tiny_loaded, cache)["cache"]["status"] == "hit"
    facts, drafter, settings = stored["machine"], stored["drafter"], stored["settings"]
    assert cache.load(facts, drafter, settings) is not None
    assert cache.load(facts | {"dtype": "bfloat16"}, drafter, settings) is None  # another machine's answer
    assert cache.load(facts, drafter | {"weights_sha256": "0" * 64}, settings) is None  # other weights
    assert cache.load(facts, drafter, settings | {"questions": 9}) is None  # another search
    files[0].write_text('{"machine": ')  # a corrupt file is measured again and replaced
    assert _choose(tiny_loaded, cache)["cache"]["status"] == "measured"
    assert cache.load(facts, drafter, settings) is not None
    assert _choose(tiny_loaded, cache, retune=True)["cache"]["status"] == "measured"


def test_a_choice_measured_on_a_busy_machine_is_used_but_not_cached(tiny_loaded, tmp_path, monkeypatch):
    monkeypatch.setattr(tree_search, "is_busy", lambda load: True)
    record = _choose(tiny_loaded, TreeCache(tmp_path))
    assert record["busy_machine"] and record["cache"]["status"] == "measured, not cached (busy machine)"
    assert not list(tmp_path.rglob("*.json"))


def test_the_fingerprint_names_cpu_flags_dtype_and_threads(tiny_loaded, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n\n"
                       "processor\t: 1\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n")
    assert cpu_model_and_flags(cpuinfo) == ("Some CPU 9000", ("avx2", "fma", "avx512f", "avx512_bf16"))
    one = machine_fingerprint(tiny_loaded.target, "float64", 1)
    assert one["target"] == tiny_loaded.target.name and one["device"] == "cpu"
    keys = {fingerprint_key(f) for f in (one, machine_fingerprint(tiny_loaded.target, "float64", 2),
                                         machine_fingerprint(tiny_loaded.target, "float32", 1))}
    assert len(keys) == 3 and fingerprint_key(dict(reversed(one.items()))) == fingerprint_key(one)


def test_cli_estimate_predicts_oracle_and_early_exit(auto_run):
    out, _ = auto_run
    runner = CliRunner()
    result = runner.invoke(main, ["profile", "--run", str(out), "--nodes", "1,2,4,16", "--repeats", "1",
                                  "--noop-cycles", "10"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    profile = json.loads((out / "profile.json").read_text())
    assert profile["methods"]["early-exit"]["early_exit"]["exit_layers"] == 1  # a quarter of 2 layers, at least 1
    result = runner.invoke(main, ["estimate-speedup", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    drafters = json.loads((out / "results.json").read_text())["drafters"]
    for label in ("oracle", "early-exit", "eagle"):
        model = drafters[label]["speedup_model"]
        assert model["tau"] == pytest.approx(drafters[label]["tau_pooled"])
        assert drafters[label]["speedup_predicted"] == model["speedup_predicted"]
        assert_speedup_model_adds_up(model)
    assert drafters["early-exit"]["speedup_model"]["per_cycle_s"]["body"] > 0  # K steps of the first layers
    assert drafters["oracle"]["speedup_model"]["per_cycle_s"]["body"] == 0  # a lookup, no forwards


def test_the_gpu_grid_reaches_64_nodes_and_the_cpu_grid_stays_small():
    gpu, cpu = AutoSettings.for_device("cuda").candidates(), AutoSettings.for_device("cpu").candidates()
    assert max(t.max_nodes for t in gpu) == 64 and max(t.max_nodes for t in cpu) == 16
    assert {t.describe() for t in cpu} >= {"chain:2", "chain:5", "top_k=2,depth=2,total_tokens=6"}
    assert not any(t.kind == "chain" for t in gpu)
    assert AutoSettings.for_device("cpu") == AutoSettings()
