"""`coral-bench report`: golden Markdown, determinism, bad input, future fields, and the HTML in Chromium.

Fixture run directories (tests/fixtures/report/, see its README) are real tiny-random runs; the
golden files pin report.md for them. The tests only compare; after an intended change rewrite the
golden files with ``make update-golden`` (scripts/update_golden.py) and review the diff.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from coral_bench.drafters.eagle import training_summary
from coral_bench.report import ReportError, load_run, write_report
from coral_bench.report.blocks import Table, markdown_table
from coral_bench.report.model import tv_points
from coral_bench.metrics.stats import paired_difference

FIXTURES = Path(__file__).parent / "fixtures" / "report"
MTBENCH4 = FIXTURES / "mtbench4"  # 4 MT-bench questions (4 categories), 3 drafters incl. oracle
ONE = FIXTURES / "one-question"  # 1 question, 1 drafter (pl2 = prompt-lookup, chain:2)
NO_DRAFTERS = FIXTURES / "no-drafters"
GOLDEN = FIXTURES / "golden"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_results(run: Path, edit) -> None:
    data = json.loads((run / "results.json").read_text())
    edit(data)
    (run / "results.json").write_text(json.dumps(data, indent=2))


def _future_run(dst: Path) -> Path:
    """mtbench4 with the fields later schema-1 runs add: predictions, LM-head shares, a profile, weights."""
    run = _copy(MTBENCH4, dst)

    def edit(data):
        for i, entry in enumerate(data["drafters"].values()):
            entry["speedup_predicted"] = 1.0 + 0.5 * i
            entry["lm_head_share"] = 0.3 + 0.1 * i
            entry["lm_head_total_share"] = 0.45 + 0.1 * i
            entry["weights"] = {"checkpoint": f"drafters/{i}", "weights_sha256": f"{i}" * 64}
        first = next(iter(data["drafters"].values()))
        first["weights"]["trained"] = training_summary(TRAINED_CORAL)
        data["profile"] = {"t_v": [{"nodes": n, "seconds": 0.010 + 0.001 * n, "context": 256} for n in (1, 4, 8, 16)]}

    _edit_results(run, edit)
    return run


# The coral_bench section of a checkpoint written by `coral-bench train` (and `train-router`), abridged.
TRAINED_CORAL = {
    "method": "coral", "git_hash": "abc123",
    "budget": {"epochs": 3, "optimizer_steps": 1039, "tokens": 8006073, "wall_time_s": 7200.0, "complete": True},
    "eval": {"accuracy": [0.65, 0.52, 0.44], "loss": 9.1},
    "loss": {"distill_weight": 1.0, "distill_k": 10, "step_decay": 1.0, "csra_weight": 0.5, "csra_temperature": 0.2,
             "csra_anchor": "symmetric", "regression_weight": 1.0},
    "settings": {"steps": 3, "history": "keep-real", "lr": 0.001},
    "router": {"training": {"budget": {"optimizer_steps": 43, "rows": 192129, "wall_time_s": 360.0}}},
}


def test_training_section_lists_each_trained_drafter(tmp_path):
    run = _future_run(tmp_path / "future")
    md = write_report([run], tmp_path / "out").markdown.read_text()
    section = md.split("## How the drafters were trained")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # below header and rule
    assert len(rows) == 1  # only the first drafter has a training record
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1:] == ["coral", "3", "3", "1039", "8,006,073", "2.00", "0.650 / 0.520 / 0.440",
                         "top-K 10, step decay 1.0, λ 0.5, τ_c 0.2, anchor symmetric, history keep-real",
                         "43 steps, 0.10 h", "yes", "0" * 12]
    assert section.count("| 0.0") == 0 and "regression" not in section  # untuned settings stay out


def test_training_summary_of_an_untrained_checkpoint_is_none():
    assert training_summary({}) is None


def _replay(label: str, tree: str, emitted: dict[str, list[list[int]]]) -> dict:
    """A replays.json entry (coral-bench replay): per question, one emitted-per-cycle list per turn."""
    samples = [{"question_id": q, "turn": t, "emitted": e, "accepted": [x - 1 for x in e]}
               for q, turns in emitted.items() for t, e in enumerate(turns)]
    cycles = sum(len(s["emitted"]) for s in samples)
    return {"label": label, "drafter": "eagle2", "tree": tree, "temperature": 0.0, "cycles": cycles,
            "tau_pooled": sum(sum(s["emitted"]) for s in samples) / cycles, "samples": samples}


def test_replays_get_their_table_and_paired_differences(tmp_path):
    run = _copy(ONE, tmp_path / "run")
    chain = "chain:3"
    replays = {f"a@tree={chain}": _replay("a", chain, {"1": [[2, 2], [4]], "2": [[1, 3]]}),
               f"b@tree={chain}": _replay("b", chain, {"1": [[1, 1], [1]], "2": [[1, 1]]}),
               "c@tree=chain:5": _replay("c", "chain:5", {"1": [[3]]})}
    (run / "replays.json").write_text(json.dumps(replays))
    md = write_report([run], tmp_path / "out").markdown.read_text()
    section = md.split("## Replayed acceptance (T = 0, untimed)")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and not line.startswith("| -")]
    # a: question 1 pools (2 + 2 + 4) / 3 cycles, question 2 (1 + 3) / 2; pooled over all: 12 / 5
    assert ["a", "eagle2", "chain:3", "3", "5", "2.400", "2.33", "–"] in rows
    # b − a per question: (1 − 8/3) and (1 − 2), mean −4/3; two questions, so a CI and a verdict
    paired = [r for r in rows if r[0] == "chain:3"]
    assert len(paired) == 1 and paired[0][1:6] == ["b", "a", "1.00", "2.33", "-1.333"]
    assert paired[0][-1] == "b < a"
    assert not any(r[0] == "chain:5" for r in rows)  # c is alone in its tree: nothing to pair with
    assert "## How the drafters were trained" not in md  # these replays name no trained weights


def test_replayed_trained_drafters_are_in_the_training_section(tmp_path):
    run = _copy(ONE, tmp_path / "run")
    entry = _replay("c3", "chain:3", {"1": [[2]]})
    entry["provenance"] = {"weights": {"weights_sha256": "f" * 64, "trained": training_summary(TRAINED_CORAL)}}
    (run / "replays.json").write_text(json.dumps({"c3@tree=chain:3": entry}))
    md = write_report([run], tmp_path / "out").markdown.read_text()
    training = md.split("## How the drafters were trained")[1].split("\n## ")[0]
    assert "| c3 " in training and "f" * 12 in training and "8,006,073" in training


def test_corrupt_replays_is_one_clear_error(tmp_path):
    run = _copy(ONE, tmp_path / "run")
    (run / "replays.json").write_text('{"x": {"label": 1}}')
    with pytest.raises(ReportError, match="replays.json is not a coral-bench replays file"):
        load_run(run)


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    assert path.exists(), f"missing golden file {path}: make update-golden"
    assert text == path.read_text(), f"report.md differs from {path} (an intended change: make update-golden)"


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("three-runs")
    write_report([MTBENCH4, ONE, NO_DRAFTERS], out)
    return out


# ---------------------------------------------------------------------------------------------
# golden files and determinism


def test_single_run_markdown_matches_golden(tmp_path):
    files = write_report([MTBENCH4], tmp_path)
    _golden("mtbench4.md", files.markdown.read_text())


def test_three_runs_markdown_matches_golden(three_runs):
    _golden("three-runs.md", (three_runs / "report.md").read_text())


def test_rerendering_is_byte_for_byte_identical(tmp_path, three_runs):
    write_report([MTBENCH4, ONE, NO_DRAFTERS], tmp_path)
    names = sorted(p.relative_to(three_runs) for p in three_runs.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for name in names:
        assert (three_runs / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_svg_figures_carry_no_date_or_creator(three_runs):
    for svg in (three_runs / "report-figures").glob("*.svg"):
        text = svg.read_text()
        assert "<dc:date>" not in text and "Matplotlib v" not in text, svg.name


def test_markdown_links_every_figure_it_writes(three_runs):
    md = (three_runs / "report.md").read_text()
    figures = sorted(p.name for p in (three_runs / "report-figures").glob("*.svg"))
    assert figures == ["accepted.svg", "reach.svg", "speedup.svg", "time-split.svg"]
    for name in figures:
        assert f"](report-figures/{name})" in md


def test_report_reads_result_files_without_torch(tmp_path):
    code = ("import sys; from pathlib import Path; from coral_bench.report import write_report; "
            f"write_report([Path({str(MTBENCH4)!r})], Path({str(tmp_path)!r})); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "report.html").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# content


def test_headline_numbers_come_from_results_json(tmp_path):
    md = write_report([MTBENCH4], tmp_path).markdown.read_text()
    results = json.loads((MTBENCH4 / "results.json").read_text())
    for label, entry in results["drafters"].items():
        lo, hi = entry["speedup_ci95"]
        assert f"{entry['speedup']:.2f}× [{lo:.2f}, {hi:.2f}]" in md, label
        assert f"{entry['tau_pooled']:.2f}" in md
    assert "oracle (upper bound)" in md
    assert "Published reference numbers" in md and "3.46×" in md and "secondary source" in md
    for category in ("writing", "roleplay", "reasoning", "math"):
        assert f"| {category} " in md
    assert "| turn 1 " in md and "| turn 2 " in md
    assert results["provenance"]["date"] in md and results["provenance"]["git_hash"] in md


def test_one_question_one_drafter_has_the_essential_parts(tmp_path):
    files = write_report([ONE], tmp_path)
    md = files.markdown.read_text()
    assert "## Headline" in md and "| pl2 " in md
    assert {p.name for p in files.figures} >= {"speedup.svg", "reach.svg", "time-split.svg"}
    for figure in files.figures:
        assert figure.stat().st_size > 1000 and figure.read_text().lstrip().startswith("<?xml")
    assert "## Acceptance" in md and "## Where the time goes" in md


def test_future_fields_add_their_sections(tmp_path):
    run = _future_run(tmp_path / "future")
    files = write_report([run], tmp_path / "out")
    md = files.markdown.read_text()
    assert "## Predicted vs measured speedup" in md and "## LM-head share of drafting time" in md
    assert "## Verification cost T_V(n)" in md and "| context 256 |      16 | 26.000 |" in md
    assert {p.name for p in files.figures} >= {"predicted.svg", "verification-cost.svg"}
    assert "Not in these runs" not in md
    labels = json.loads((run / "results.json").read_text())["drafters"]
    assert ", ".join(f"{label} {str(i) * 12}" for i, label in enumerate(labels)) in md  # weights named


def test_unknown_profile_shape_is_named_not_fatal(tmp_path):
    run = _copy(ONE, tmp_path / "run")
    _edit_results(run, lambda d: d.update(profile={"something": 1}))
    md = write_report([run], tmp_path / "out").markdown.read_text()
    assert "has a `profile` section but no T_V(n) points" in md
    assert tv_points({"t_v": {"nodes": [1, 2], "seconds": [0.1, 0.2]}}) == {"": [(1, 0.1), (2, 0.2)]}


def test_sampled_run_without_equality_fields(tmp_path):
    run = _copy(ONE, tmp_path / "run")

    def edit(data):
        data["config"]["sampling"]["temperature"] = 1.0
        for entry in (*data["drafters"].values(), *data["peers"].values()):
            for key in ("identical", "ties", "mismatches", "equal_to_vanilla", "tie_threshold"):
                entry.pop(key, None)
        data["peers"]["hf-vanilla"].update(cycles=None, reach_by_depth=None, accept_histogram=None)

    _edit_results(run, edit)
    md = write_report([run], tmp_path / "out").markdown.read_text()
    assert "not checked (T > 0)" in md and "T = 1, so equality with vanilla is not checked" in md


def test_malformed_record_is_one_line(tmp_path):
    run = _copy(ONE, tmp_path / "run")
    _edit_results(run, lambda d: d["drafters"]["pl2"].update(new_tokens="many"))
    with pytest.raises(ReportError, match="the record of 'pl2' has a malformed field"):
        load_run(run)


def test_markdown_table_escapes_pipes_and_right_aligns_numbers():
    text = markdown_table(Table(("name", "value"), (("a|b", "1.50"), ("c", "–"))))
    assert text.splitlines() == ["| name | value |", "| ---- | ----: |", "| a\\|b |  1.50 |", "| c    |     – |"]


# ---------------------------------------------------------------------------------------------
# paired τ differences between drafters

# Accepted draft tokens per cycle, per drafter of mtbench4, question and turn (turn 0, turn 1). Each
# question's τ pools its turns: Σ (accepted + 1) / cycles.
CRAFTED = {
    "prompt-lookup": {q: ((1, 1), (1, 1)) for q in ("81", "91", "101", "111")},  # τ 2 everywhere
    "oracle": {"81": ((3,), (1, 1)), "91": ((3, 3), (3,)), "101": ((2, 2), (2,)), "111": ((3, 3), (3, 3))},
    "noisy": {"81": ((0, 0), (0,)), "91": ((2, 2), (2,)), "101": ((0,), (0,)), "111": ((2,), (2, 2))},
}
CRAFTED_TAUS = {"prompt-lookup": {"81": 2.0, "91": 2.0, "101": 2.0, "111": 2.0},
                "oracle": {"81": 8 / 3, "91": 4.0, "101": 3.0, "111": 4.0},
                "noisy": {"81": 1.0, "91": 3.0, "101": 1.0, "111": 3.0}}
PAIRED = "## Paired τ differences between drafters"


def _crafted_run(dst: Path, questions: tuple[str, ...] = ("81", "91", "101", "111")) -> Path:
    """mtbench4 whose drafters' samples accept as CRAFTED says (uncut), on ``questions`` only."""
    run = _copy(MTBENCH4, dst)
    lines = []
    for line in (run / "samples.jsonl").read_text().splitlines():
        sample = json.loads(line)
        if sample["question_id"] not in questions:
            continue
        if sample["method"] in CRAFTED:
            accepted = CRAFTED[sample["method"]][sample["question_id"]][sample["turn"]]
            sample.update(accepted=list(accepted), cycles=len(accepted), new_tokens=1 + sum(a + 1 for a in accepted))
        lines.append(json.dumps(sample))
    (run / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _paired_rows(md: str) -> list[list[str]]:
    """The cells of the paired-τ table's body rows."""
    table = md.split(PAIRED, 1)[1].split("\n\n")[1]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in table.splitlines()[2:]]


def test_run_loads_each_methods_question_taus(tmp_path):
    taus = load_run(_crafted_run(tmp_path / "run")).question_taus
    for label, expected in CRAFTED_TAUS.items():
        assert taus[label] == pytest.approx(expected), label
    assert set(taus) == {"vanilla", "prompt-lookup", "oracle", "noisy", "hf-vanilla"}


def test_paired_tau_table_numbers_and_verdicts(tmp_path):
    md = write_report([_crafted_run(tmp_path / "run")], tmp_path / "out").markdown.read_text()
    rows = _paired_rows(md)
    # later drafter − earlier drafter, in the run's order: oracle − pl, noisy − pl, noisy − oracle
    assert [r[:2] for r in rows] == [["oracle", "prompt-lookup"], ["noisy", "prompt-lookup"], ["noisy", "oracle"]]
    # by hand: oracle − pl = 2/3, 2, 1, 2; noisy − pl = −1, 1, −1, 1; noisy − oracle = −5/3, −1, −2, −1
    expected_means = (17 / 12, 0.0, -17 / 12)
    expected_tau = {"prompt-lookup": 2.0, "oracle": 41 / 12, "noisy": 2.0}
    verdicts = ("oracle > prompt-lookup", "no clear difference", "noisy < oracle")
    for row, mean, verdict in zip(rows, expected_means, verdicts):
        a, b, tau_a, tau_b, diff, ci, paired, said = row
        assert (tau_a, tau_b) == (f"{expected_tau[a]:.2f}", f"{expected_tau[b]:.2f}")
        assert diff == f"{mean:+.3f}" and paired == "4" and said == verdict, row
        _, low, high = paired_difference(CRAFTED_TAUS[a], CRAFTED_TAUS[b], seed=0, resamples=2000)
        assert ci == f"[{low:+.3f}, {high:+.3f}]", row
    assert rows[0][5] != rows[2][5]  # the CI is the pair's own, not a shared one


def test_paired_tau_one_question_gives_no_ci(tmp_path):
    md = write_report([_crafted_run(tmp_path / "run", ("81",))], tmp_path / "out").markdown.read_text()
    rows = _paired_rows(md)
    assert rows[0] == ["oracle", "prompt-lookup", "2.67", "2.00", "+0.667", "–", "1", "1 question: no CI"]
    assert all(r[5] == "–" and r[7] == "1 question: no CI" for r in rows)


def test_paired_tau_only_for_runs_with_two_drafters(tmp_path, three_runs):
    assert PAIRED not in write_report([ONE], tmp_path / "one").markdown.read_text()  # one drafter: no table
    assert PAIRED not in write_report([NO_DRAFTERS], tmp_path / "none").markdown.read_text()
    rows = _paired_rows((three_runs / "report.md").read_text())
    assert len(rows) == 3 and {r[0] for r in rows} == {"A"}  # runs B (one drafter) and C (none) add no rows


def test_paired_tau_without_samples_is_explained(tmp_path):
    run = _copy(MTBENCH4, tmp_path / "run")
    (run / "samples.jsonl").unlink()
    md = write_report([run], tmp_path / "out").markdown.read_text()
    assert PAIRED not in md
    assert "no samples.jsonl, so no paired τ differences between its drafters" in md


# ---------------------------------------------------------------------------------------------
# bad input: one clear line, never a traceback


def _cli(*args: str):
    from coral_bench.cli import main

    return CliRunner().invoke(main, ["report", *args])


def test_not_a_run_directory(tmp_path):
    with pytest.raises(ReportError, match="not a coral-bench run directory"):
        load_run(tmp_path)
    result = _cli(str(tmp_path))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not a coral-bench run directory (no results.json)" in result.output


def test_missing_and_unfinished_run_directories(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ReportError, match="unfinished run .*--resume"):
        load_run(tmp_path)


def test_newer_schema_is_refused(tmp_path):
    run = _copy(ONE, tmp_path / "run")
    _edit_results(run, lambda d: d.update(schema_version=99))
    with pytest.raises(ReportError, match="schema_version 99, newer than this coral-bench reads"):
        load_run(run)
    result = _cli(str(run), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "schema_version 99" in result.output and "Traceback" not in result.output


def test_corrupt_files_name_the_file(tmp_path):
    run = _copy(ONE, tmp_path / "run")
    (run / "results.json").write_text("{ not json")
    with pytest.raises(ReportError, match="results.json is not valid JSON"):
        load_run(run)
    run2 = _copy(ONE, tmp_path / "run2")
    _edit_results(run2, lambda d: d.pop("baseline"))
    with pytest.raises(ReportError, match="lacks the 'baseline' section"):
        load_run(run2)
    run3 = _copy(ONE, tmp_path / "run3")
    with open(run3 / "cycles.jsonl", "a") as f:
        f.write("{broken\n")
    with pytest.raises(ReportError, match=r"cycles.jsonl:\d+: corrupt cycle line"):
        load_run(run3)
    run4 = _copy(ONE, tmp_path / "run4")
    lines = (run4 / "samples.jsonl").read_text().splitlines()
    sample = json.loads(lines[1])
    del sample["accepted"]  # the per-question τ needs every field of a sample record
    (run4 / "samples.jsonl").write_text("\n".join([lines[0], json.dumps(sample), *lines[2:]]) + "\n")
    with pytest.raises(ReportError, match=r"samples.jsonl:2: corrupt sample line"):
        load_run(run4)


def test_run_without_drafters_says_so(tmp_path):
    md = write_report([NO_DRAFTERS], tmp_path).markdown.read_text()
    assert "has no drafters" in md and "rerun with --drafter" in md
    assert "| vanilla " in md and "| hf-vanilla " in md


def test_missing_cycles_file_is_reported(tmp_path):
    run = _copy(ONE, tmp_path / "run")
    (run / "cycles.jsonl").unlink()
    md = write_report([run], tmp_path / "out").markdown.read_text()
    assert "no cycles.jsonl, so no per-cycle time split" in md


def test_cli_writes_into_the_first_run_directory_by_default(tmp_path):
    run = _copy(ONE, tmp_path / "run")
    result = _cli(str(run))
    assert result.exit_code == 0, result.output
    assert (run / "report.md").exists() and (run / "report.html").exists()


# ---------------------------------------------------------------------------------------------
# the HTML in headless Chromium, through chromedriver's W3C WebDriver API (urllib, no selenium)

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    reason = "chromium / chromedriver not installed (run tests/install_chromium.sh as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + "; CI=true needs them")
    pytest.skip(reason)


class WebDriver:
    """The few W3C WebDriver calls this test needs, over urllib."""

    def __init__(self, chromium: str, driver: str, profile: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                self._call("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    self.proc.kill()
                    raise
                time.sleep(0.1)
        options = {"binary": chromium, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options,
                                                 "goog:loggingPrefs": {"browser": "ALL"}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def get(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def run(self, script: str):
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []})

    def console(self) -> list[dict]:
        return self._call("POST", f"/session/{self.session}/se/log", {"type": "browser"})

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def test_missing_browser_fails_under_ci_and_skips_otherwise(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true needs them"):
        _browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="install_chromium.sh"):
        _browser()


def test_html_renders_in_headless_chromium(tmp_path):
    chromium, driver = _browser()
    future = _future_run(tmp_path / "future")
    files = write_report([MTBENCH4, ONE, NO_DRAFTERS, future], tmp_path / "out")
    browser = WebDriver(chromium, driver, tempfile.mkdtemp(dir=tmp_path))
    try:
        browser.get(files.html.resolve().as_uri())
        page = browser.run("""
            const imgs = Array.from(document.images);
            return {
              title: document.title,
              ready: document.readyState,
              images: imgs.map(i => ({id: i.closest('figure').id, complete: i.complete, width: i.naturalWidth,
                                      height: i.naturalHeight, shown: i.getBoundingClientRect().width})),
              headline: document.querySelector('#headline table').innerText,
              tables: document.querySelectorAll('table.data').length,
              external: Array.from(document.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') ||
                        e.getAttribute('href')).filter(u => !u.startsWith('data:') && !u.startsWith('#')),
            };""")
        console = browser.console()
    finally:
        browser.close()
    assert page["ready"] == "complete" and page["title"] == "coral-bench report: 4 runs"
    assert [e for e in console if e.get("level") in ("SEVERE", "WARNING")] == []
    assert page["external"] == []  # self-contained: nothing to fetch
    ids = sorted(i["id"] for i in page["images"])
    assert ids == sorted(f"fig-{n}" for n in ("speedup", "reach", "accepted", "time-split", "predicted",
                                              "verification-cost"))
    for image in page["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0 and image["shown"] > 0, image
    results = json.loads((MTBENCH4 / "results.json").read_text())
    oracle = results["drafters"]["oracle"]
    assert f"{oracle['speedup']:.2f}×" in page["headline"] and f"{oracle['tau_pooled']:.2f}" in page["headline"]
    assert f"{results['baseline']['tokens_per_s']:.1f}" in page["headline"]
    assert page["tables"] >= 10
