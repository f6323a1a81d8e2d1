"""`coral-bench check-stale`: a fake run against a temporary git repository whose commits touch
decoder code or only docs; dirty, unknown and missing hashes; no git; bad input in one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from coral_bench.rundir import staleness as st

IDENTITY = ("-c", "user.name=coral-bench tests", "-c", "user.email=tests@example.invalid", "-c", "commit.gpgsign=false")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *IDENTITY, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "add", "--", *files)
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "checkout"
    root.mkdir()
    _git(root, "init", "-q")
    _commit(root, {"coral_bench/core/decode.py": "v1\n", "coral_bench/drafters/eagle.py": "v1\n",
                   "coral_bench/drafters/vanilla.py": "v1\n", "README.md": "v1\n"}, "first")
    return root


def _run(where: Path, git_hash: str | None, sessions: list | None = None) -> Path:
    where.mkdir(parents=True)
    provenance = {"git_hash": git_hash, "date": "2026-11-26T15:23:13+00:00"}
    if sessions is not None:
        provenance["sessions"] = sessions
    (where / "results.json").write_text(json.dumps({"schema_version": 1, "provenance": provenance}))
    return where


def _one(run: Path, repo: Path) -> st.Verdict:
    (verdict,) = st.check_runs([run], repo)
    return verdict


def test_docs_only_commit_keeps_the_run_current(tmp_path, repo):
    run = _run(tmp_path / "run", _git(repo, "rev-parse", "HEAD"))
    _commit(repo, {"README.md": "v2\n", "docs/notes.md": "new\n"}, "docs")
    verdict = _one(run, repo)
    assert verdict.state == st.CURRENT and verdict.ok, verdict.line
    assert verdict.line.startswith("current: run: made at ")


def test_decoder_commit_makes_the_run_stale(tmp_path, repo):
    run = _run(tmp_path / "run", _git(repo, "rev-parse", "HEAD"))
    decoder = _commit(repo, {"coral_bench/core/decode.py": "v2\n"}, "decoder change")
    verdict = _one(run, repo)
    assert verdict.state == st.STALE and not verdict.ok
    assert "coral_bench/core/decode.py" in verdict.line and decoder[:7] in verdict.line and "redo the run" in verdict.line
    assert "\n" not in verdict.line


def test_drafter_commit_makes_the_run_stale_and_a_revert_makes_it_current(tmp_path, repo):
    run = _run(tmp_path / "run", _git(repo, "rev-parse", "HEAD"))
    _commit(repo, {"coral_bench/drafters/eagle.py": "v2\n"}, "drafter change")
    assert _one(run, repo).state == st.STALE
    _commit(repo, {"coral_bench/drafters/eagle.py": "v1\n"}, "revert")
    assert _one(run, repo).state == st.CURRENT


def test_uncommitted_decoder_edit_makes_the_run_stale(tmp_path, repo):
    run = _run(tmp_path / "run", _git(repo, "rev-parse", "HEAD"))
    (repo / "coral_bench" / "core" / "decode.py").write_text("edited\n")
    verdict = _one(run, repo)
    assert verdict.state == st.STALE and "uncommitted edits" in verdict.line


def test_dirty_hash_is_reported_as_uncommitted_code(tmp_path, repo):
    head = _git(repo, "rev-parse", "HEAD")
    run = _run(tmp_path / "run", head + "-dirty")
    verdict = _one(run, repo)
    assert verdict.state == st.UNKNOWN and not verdict.ok
    assert "with uncommitted changes" in verdict.line and "clean checkout" in verdict.line
    _commit(repo, {"coral_bench/core/decode.py": "v2\n"}, "decoder change")
    verdict = _one(run, repo)
    assert verdict.state == st.STALE and "with uncommitted changes" in verdict.line


def test_unknown_and_missing_hashes_cannot_be_checked(tmp_path, repo):
    unknown = _one(_run(tmp_path / "a", "0" * 40), repo)
    assert unknown.state == st.UNKNOWN and "not in this repository" in unknown.line
    missing = _one(_run(tmp_path / "b", None), repo)
    assert missing.state == st.UNKNOWN and "no git hash recorded" in missing.line


def test_a_resumed_run_is_as_stale_as_its_oldest_session(tmp_path, repo):
    old = _git(repo, "rev-parse", "HEAD")
    new = _commit(repo, {"coral_bench/core/decode.py": "v2\n"}, "decoder change")
    run = _run(tmp_path / "run", old, sessions=[{"git_hash": old}, {"git_hash": new}])
    assert st.recorded_hashes(run) == (old, new)
    assert _one(run, repo).state == st.STALE


def test_no_git_checkout_and_no_git(tmp_path, repo, monkeypatch):
    run = _run(tmp_path / "run", _git(repo, "rev-parse", "HEAD"))
    elsewhere = tmp_path / "not-a-checkout"
    elsewhere.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert "is not in a git checkout" in _one(run, elsewhere).line
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    verdict = _one(run, repo)
    assert verdict.state == st.UNKNOWN and "git is not installed" in verdict.line


def test_bad_run_directories_are_one_line(tmp_path, repo):
    with pytest.raises(st.StaleCheckError, match="does not exist"):
        st.check_runs([tmp_path / "nope"], repo)
    (tmp_path / "file").write_text("")
    with pytest.raises(st.StaleCheckError, match="is not a directory"):
        st.check_runs([tmp_path / "file"], repo)
    (tmp_path / "empty").mkdir()
    with pytest.raises(st.StaleCheckError, match="not a finished coral-bench run"):
        st.check_runs([tmp_path / "empty"], repo)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{ not json")
    with pytest.raises(st.StaleCheckError, match="cannot be read as JSON"):
        st.check_runs([broken], repo)


def _cli(*args: str):
    from coral_bench.cli import main

    return CliRunner().invoke(main, ["check-stale", *args])


def test_cli_exit_status_and_lines(tmp_path, repo):
    head = _git(repo, "rev-parse", "HEAD")
    current = _run(tmp_path / "current", head)
    result = _cli(str(current), "--repo", str(repo))
    assert result.exit_code == 0 and "current: current: made at" in result.output and "all 1 run(s) current" in result.output
    _commit(repo, {"coral_bench/core/decode.py": "v2\n"}, "decoder change")
    dirty = _run(tmp_path / "dirty", head + "-dirty")
    result = _cli(str(current), str(dirty), "--repo", str(repo))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("stale: current:") and lines[1].startswith("stale: dirty:") and len(lines) == 3
    bad = _cli(str(tmp_path / "nope"), "--repo", str(repo))
    assert bad.exit_code == 2 and "does not exist" in bad.output and "Traceback" not in bad.output
    assert _cli().exit_code == 2


def test_cli_checks_the_runs_a_manifest_names(tmp_path, repo):
    _run(tmp_path / "runs" / "a", _git(repo, "rev-parse", "HEAD"))
    manifest = tmp_path / "reports.toml"
    manifest.write_text("[[report]]\nout = 'out'\nruns = ['runs/a']\n")
    result = _cli("--manifest", str(manifest), "--repo", str(repo))
    assert result.exit_code == 0 and "current: a: made at" in result.output


DECODER = '''"""The loop."""
from coral_bench.tree import DraftTree


def step(x):
    """One step."""
    return x + 1  # why
'''


def test_a_move_that_only_rewrites_imports_keeps_the_run_current(tmp_path, repo):
    _commit(repo, {"coral_bench/decode.py": DECODER}, "decoder at its old place")
    run = _run(tmp_path / "run", _git(repo, "rev-parse", "HEAD"))
    _git(repo, "rm", "-q", "coral_bench/decode.py")
    moved = DECODER.replace("from coral_bench.tree import", "from coral_bench.core.tree import")
    moved = moved.replace("One step.", "One step (docs/methods.md §4).").replace("# why", "# why, cited")
    _commit(repo, {"coral_bench/core/loop.py": moved}, "move: imports, a docstring and a comment change")
    verdict = _one(run, repo)
    assert verdict.state == st.CURRENT, verdict.line


def test_a_move_with_a_code_change_makes_the_run_stale(tmp_path, repo):
    _commit(repo, {"coral_bench/decode.py": DECODER}, "decoder at its old place")
    run = _run(tmp_path / "run", _git(repo, "rev-parse", "HEAD"))
    _git(repo, "rm", "-q", "coral_bench/decode.py")
    _commit(repo, {"coral_bench/core/loop.py": DECODER.replace("x + 1", "x + 2")}, "move and change")
    verdict = _one(run, repo)
    assert verdict.state == st.STALE and "coral_bench/core/loop.py" in verdict.line, verdict.line
    assert "new.py" not in verdict.line


def test_same_code_ignores_imports_docstrings_and_comments_only():
    same = st.same_code
    assert same(b"import a\nx = 1\n", b"import b\n\nx = 1  # note\n", "m.py")
    assert same(b'def f():\n    """A."""\n    return 1\n', b'def f():\n    """B."""\n    return 1\n', "m.py")
    assert not same(b"x = 1\n", b"x = 2\n", "m.py")
    assert not same(b'def f():\n    return "A."\n', b'def f():\n    return "B."\n', "m.py")
    assert not same(b"x = 1\n", b"x = 1 \n", "weights.bin")


def test_a_vanilla_only_run_is_not_made_stale_by_drafter_code(tmp_path, repo):
    run = _run(tmp_path / "run", _git(repo, "rev-parse", "HEAD"))
    data = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**data, "drafters": {}}))
    _commit(repo, {"coral_bench/drafters/eagle.py": "v2\n"}, "drafter change")
    assert _one(run, repo).state == st.CURRENT
    _commit(repo, {"coral_bench/drafters/vanilla.py": "v2\n"}, "vanilla drafter change")
    assert _one(run, repo).state == st.STALE


def test_a_replay_made_before_a_drafter_change_makes_the_run_stale(tmp_path, repo):
    old = _git(repo, "rev-parse", "HEAD")
    _commit(repo, {"coral_bench/drafters/eagle.py": "v2\n"}, "drafter change")
    run = _run(tmp_path / "run", _git(repo, "rev-parse", "HEAD"))
    assert _one(run, repo).state == st.CURRENT
    (run / "replays.json").write_text(json.dumps({"eagle@tree=chain:3": {"provenance": {"git_hash": old}}}))
    verdict = _one(run, repo)
    assert verdict.state == st.STALE and "coral_bench/drafters/eagle.py" in verdict.line, verdict.line


def test_an_added_drafter_module_keeps_the_run_current(tmp_path, repo):
    """A module that did not exist when the run was made cannot have run in it; using it changes an
    existing file, which makes the run stale."""
    run = _run(tmp_path / "run", _git(repo, "rev-parse", "HEAD"))
    _commit(repo, {"coral_bench/drafters/hybrid.py": "def build():\n    return 1\n"}, "a new drafter")
    assert _one(run, repo).state == st.CURRENT, _one(run, repo).line
    _commit(repo, {"coral_bench/drafters/eagle.py": "from .hybrid import build\nv = build()\n"}, "used")
    assert _one(run, repo).state == st.STALE


def test_an_added_module_counts_when_a_deleted_one_has_no_successor(tmp_path, repo):
    """A deleted module without a twin may live on, rewritten, in an added one that git pairs with it at a
    loose similarity: that addition counts; an unrelated one does not."""
    _commit(repo, {"coral_bench/old_loop.py": DECODER}, "a decoder outside the watched folders")
    run = _run(tmp_path / "run", _git(repo, "rev-parse", "HEAD"))
    _git(repo, "rm", "-q", "coral_bench/old_loop.py")
    rewritten = DECODER.replace("x + 1", "x * 3 - 2") + "\n\ndef twice(x):\n    return step(step(x))\n"
    _commit(repo, {"coral_bench/core/loop.py": rewritten, "coral_bench/drafters/new.py": "def f():\n    return 7\n"},
            "rewritten, and an unrelated new module")
    verdict = _one(run, repo)
    assert verdict.state == st.STALE and "coral_bench/core/loop.py" in verdict.line, verdict.line
    assert "new.py" not in verdict.line
