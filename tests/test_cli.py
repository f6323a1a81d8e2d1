"""The CLI in-process (click's CliRunner): a tiny run writes a run directory; bad input fails cleanly."""

import json

import pytest
from click.testing import CliRunner

from coral_bench.cli import main
from coral_bench.core.records import SampleRecord

TINY = ["--target", "tiny-random", "--dtype", "float64", "--threads", "1"]


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    result = _invoke("run", "--suite", "mtbench", *TINY, "--limit", "2", "--max-new-tokens", "12",
                     "--drafter", "prompt-lookup", "--drafter", "oracle", "--drafter", "pl2=prompt-lookup@tree=chain:2",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_run_writes_a_run_directory(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["schema_version"] == 1
    assert set(results["drafters"]) == {"prompt-lookup", "oracle", "pl2"}
    assert set(results["peers"]) == {"hf-vanilla"}
    assert results["drafters"]["pl2"]["tree"] == "chain:2"
    for name, row in results["drafters"].items():
        assert row["equal_to_vanilla"] == 1.0, name  # float64 tiny model: exact greedy equality
        for key in ("tau_pooled", "tau_per_question", "reach_by_depth", "accept_histogram", "tokens_per_s",
                    "speedup", "speedup_decode", "speedup_per_prompt", "speedup_ci95", "equality", "cycles"):
            assert key in row, (name, key)
        assert row["equality"]["identical"] == row["pairs"] == 4 and row["equality"]["noise_bound"]["value"] < 1e-12
    assert results["baseline"]["tau_pooled"] == 1.0
    assert results["peers"]["hf-vanilla"]["equal_to_vanilla"] == 1.0
    samples = [SampleRecord.from_json(json.loads(l)) for l in (tiny_run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 5 * 2 * 2  # methods × questions × turns
    for key in ("git_hash", "torch", "transformers", "chat_template_sha256", "load_average_before", "command"):
        assert key in results["provenance"]


def test_resume_of_a_finished_run_changes_nothing(tiny_run):
    before = (tiny_run / "samples.jsonl").read_bytes()
    result = _invoke("run", "--suite", "mtbench", *TINY, "--limit", "2", "--max-new-tokens", "12",
                     "--drafter", "prompt-lookup", "--drafter", "oracle", "--drafter", "pl2=prompt-lookup@tree=chain:2",
                     "--out", str(tiny_run), "--resume")
    assert result.exit_code == 0, result.output
    assert (tiny_run / "samples.jsonl").read_bytes() == before


@pytest.mark.parametrize("args,message", [
    (["--suite", "nope"], "unknown suite"),
    (["--suite", "mtbench", "--limit", "0"], "--limit"),
    (["--suite", "mtbench", "--drafter", "nope"], "unknown drafter"),
    (["--suite", "mtbench", "--target", "/no/such/model"], "target"),
    (["--suite", "mtbench", "--dtype", "float8"], "float8"),
    (["--suite", "mtbench", "--device", "tpu9"], "device"),
    (["--suite", "mtbench", "--tree", "wide"], "bad tree"),
    (["--suite", "mtbench", "--drafter", "prompt-lookup", "--drafter", "prompt-lookup"], "share the result key"),
    (["--suite", "mtbench", "--max-new-tokens", "5000"], "context"),
    (["--suite", "mtbench", "--peer", "none", "--peer", "hf-vanilla"], "cannot be combined"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    # Later values of an option win in click: each case overrides the tiny defaults it needs to.
    result = CliRunner().invoke(main, ["run", *TINY, "--limit", "1", *args, "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_peer_none_runs_vanilla_alone(tmp_path):
    out = tmp_path / "r"
    result = _invoke("run", "--suite", "mtbench", *TINY, "--limit", "1", "--max-new-tokens", "6", "--peer", "none",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["peers"] == {} and results["drafters"] == {} and results["baseline"]["samples"] == 2
    methods = {json.loads(line)["method"] for line in (out / "samples.jsonl").read_text().splitlines()}
    assert methods == {"vanilla"}


def test_malformed_question_file_names_the_line(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["hi"]}\n{not json\n')
    result = CliRunner().invoke(main, ["run", "--suite", str(bad), *TINY, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and ":2" in result.output and "Traceback" not in result.output


def test_existing_output_without_resume_is_refused_and_kept(tiny_run):
    before = (tiny_run / "samples.jsonl").read_bytes()
    result = CliRunner().invoke(main, ["run", "--suite", "mtbench", *TINY, "--limit", "1", "--out", str(tiny_run)])
    assert result.exit_code == 2 and "--resume" in result.output
    assert (tiny_run / "samples.jsonl").read_bytes() == before


def test_listing_commands():
    for command, expected in (("suites", "mtbench-dev"), ("drafters", "prompt-lookup"), ("targets", "smollm2-135m")):
        result = _invoke(command)
        assert result.exit_code == 0 and expected in result.output


def test_git_hash_env_overrides_the_checkout(monkeypatch):
    from coral_bench.run import provenance

    monkeypatch.delenv(provenance.GIT_HASH_ENV, raising=False)
    own = provenance.git_hash()
    monkeypatch.setenv(provenance.GIT_HASH_ENV, "0123abc")
    assert provenance.git_hash() == "0123abc" != own


def test_recorded_paths_name_no_machine_prefix(tmp_path, monkeypatch):
    from coral_bench import paths

    assert paths.portable_path(paths.CHECKOUT_ROOT / "coral_bench" / "assets" / "x") == "coral_bench/assets/x"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.portable_path(tmp_path / ".cache" / "d") == "~/.cache/d"
    assert paths.portable_path("~/d") == "~/d"
    assert paths.portable_path("/elsewhere/d") == "/elsewhere/d"
