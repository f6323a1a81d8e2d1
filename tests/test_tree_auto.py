"""--tree auto: the argmax of the predicted speedup on a fake cost table; a tiny CLI run records and uses it;
estimate-speedup predicts oracle and early-exit drafters."""

import json

import pytest
from conftest import assert_speedup_model_adds_up
from click.testing import CliRunner

from coral_bench.cli import main
from coral_bench.core.tree import TreeShape
from coral_bench.costmodel.tree_search import AutoSettings, CandidateScore, TreeChoice, choose

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
    grid = AutoSettings(top_k=(2, 4), depth=(2,), total_tokens=(8, 16))
    # k + depth·k² candidates: 2 + 8 = 10 (≥ 7, < 15), 4 + 32 = 36
    assert [t.describe() for t in grid.candidates()] == ["top_k=2,depth=2,total_tokens=8",
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
    out = tmp_path_factory.mktemp("runs") / "run"
    args = ["run", "--suite", "mtbench", *TINY, "--limit", "1", "--max-new-tokens", "12", "--tree", "auto",
            "--drafter", "eagle", "--drafter", "oracle", "--drafter", "early-exit", "--out", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, args


def test_cli_tree_auto_records_and_uses_the_argmax(auto_run):
    out, args = auto_run
    results = json.loads((out / "results.json").read_text())
    auto = results["config"]["tree_auto"]
    assert set(auto["drafters"]) == {"eagle"}  # oracle and early-exit keep their default trees
    choice = auto["drafters"]["eagle"]
    best = max((g for g in choice["grid"] if g["speedup_predicted"] is not None),
               key=lambda g: g["speedup_predicted"])
    assert choice["tree"] == best["tree"] == results["drafters"]["eagle"]["tree"]
    assert len(choice["grid"]) == len(AutoSettings().candidates()) and choice["dev_prompts"] == 3
    assert results["drafters"]["oracle"]["tree"] == "top_k=4,depth=3,total_tokens=16"
    assert all(row["equal_to_vanilla"] == 1.0 for row in results["drafters"].values())  # greedy output = vanilla
    again = CliRunner().invoke(main, [*args, "--resume"], catch_exceptions=False)  # keeps the recorded choice
    assert again.exit_code == 0, again.output


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
    assert max(t.max_nodes for t in gpu) == 64 and max(t.max_nodes for t in cpu) == 32
    assert AutoSettings.for_device("cpu") == AutoSettings()
