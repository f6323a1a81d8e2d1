"""Suites: shipped counts and splits, subset/full prompt identity, strict definitions, error messages."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from coral_bench.paths import PACKAGE_DIR
from coral_bench.run.suites import (
    HUMANEVAL_INSTRUCTION,
    SUITES_ENV,
    Question,
    SuiteError,
    limit,
    load_suite,
    suite_names,
    suites_dir,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = {
    "mtbench": 80,
    "mtbench-dev": 40,
    "mtbench-test": 40,
    "humaneval": 80,
    "humaneval-full": 164,
    "gsm8k": 80,
    "gsm8k-full": 1319,
    "alpaca": 80,
}


@pytest.fixture(autouse=True)
def _default_suites_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SUITES_ENV, raising=False)


def test_suites_dir_is_in_the_repo() -> None:
    assert suites_dir() == PACKAGE_DIR / "suites"


# --- shipped suites --------------------------------------------------------------------------


def test_suite_names_are_the_shipped_set() -> None:
    assert suite_names() == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_suite_loads(name: str) -> None:
    suite = load_suite(name)
    assert suite.name == name
    assert len(suite.questions) == SHIPPED[name]
    assert suite.max_new_tokens == 256
    assert suite.system_prompt is None
    assert suite.source.startswith("suites/data/") and (PACKAGE_DIR / suite.source).is_file()
    assert len({q.question_id for q in suite.questions}) == len(suite.questions)


def test_mtbench_has_two_turns_in_eight_balanced_categories() -> None:
    suite = load_suite("mtbench")
    assert all(len(q.turns) == 2 for q in suite.questions)
    assert set(Counter(q.category for q in suite.questions).values()) == {10}
    assert len({q.category for q in suite.questions}) == 8


def test_mtbench_dev_test_are_fixed_disjoint_balanced_halves() -> None:
    full = load_suite("mtbench")
    dev, test = load_suite("mtbench-dev"), load_suite("mtbench-test")
    dev_ids = {q.question_id for q in dev.questions}
    test_ids = {q.question_id for q in test.questions}
    assert not dev_ids & test_ids
    assert dev_ids | test_ids == {q.question_id for q in full.questions}
    assert Counter(q.category for q in dev.questions) == Counter(q.category for q in test.questions)
    assert set(Counter(q.category for q in dev.questions).values()) == {5}
    # The rule itself: sorted by id within a category, even positions go to dev.
    for category in {q.category for q in full.questions}:
        ids = sorted((int(q.question_id) for q in full.questions if q.category == category))
        assert {str(i) for i in ids[0::2]} <= dev_ids
        assert {str(i) for i in ids[1::2]} <= test_ids
    # Questions are unchanged, in file order.
    by_id = {q.question_id: q for q in full.questions}
    assert all(by_id[q.question_id] == q for q in dev.questions + test.questions)
    in_file_order = [q.question_id for q in full.questions if q.question_id in dev_ids]
    assert [q.question_id for q in dev.questions] == in_file_order


def test_humaneval_subset_prompts_appear_identically_in_full_set() -> None:
    subset, full = load_suite("humaneval"), load_suite("humaneval-full")
    full_turns = {q.turns for q in full.questions}
    assert all(q.turns in full_turns for q in subset.questions)
    assert all(len(q.turns) == 1 and q.turns[0].startswith(HUMANEVAL_INSTRUCTION) for q in full.questions)
    assert [q.question_id for q in full.questions] == [f"HumanEval/{i}" for i in range(164)]
    assert {q.category for q in full.questions} == {q.category for q in subset.questions} == {"code"}


def test_gsm8k_subset_questions_appear_identically_in_full_set() -> None:
    subset, full = load_suite("gsm8k"), load_suite("gsm8k-full")
    full_turns = {q.turns for q in full.questions}
    assert all(q.turns in full_turns for q in subset.questions)
    assert [q.question_id for q in full.questions] == [str(i) for i in range(1319)]
    # SOURCES.md (shared/data) lists the subset's rows in test.jsonl; question 0 is row 30.
    assert full.questions[30].turns == subset.questions[0].turns
    assert {q.category for q in full.questions} == {q.category for q in subset.questions} == {"math"}


def test_alpaca_carries_the_non_commercial_note() -> None:
    suite = load_suite("alpaca")
    assert suite.note is not None and "non-commercial" in suite.note.lower()
    assert load_suite("mtbench").note is None


def test_sources_md_hashes_match_the_shipped_files() -> None:
    text = (PACKAGE_DIR / "suites" / "SOURCES.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| `([^`]+)` \|.*\| ([0-9a-f]{64}) \|$", text, flags=re.MULTILINE))
    files = (PACKAGE_DIR / "suites" / "data").rglob("*")
    on_disk = {p.relative_to(PACKAGE_DIR / "suites").as_posix() for p in files if p.is_file()}
    assert set(listed) == on_disk
    for rel, digest in listed.items():
        assert hashlib.sha256((PACKAGE_DIR / "suites" / rel).read_bytes()).hexdigest() == digest, rel


def test_every_shipped_data_file_is_inside_the_repo() -> None:
    for name in suite_names():
        assert not Path(load_suite(name).source).is_absolute()


# --- user question files ---------------------------------------------------------------------


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_user_jsonl_loads_with_defaults(tmp_path: Path) -> None:
    folder = tmp_path / "spec_bench"
    folder.mkdir()
    path = _write(
        folder / "question.jsonl",
        [
            json.dumps({"question_id": 161, "category": "translation", "turns": ["Translate: Hallo"], "x": 1}),
            "",
            json.dumps({"question_id": "a", "turns": ["One", "Two\u2028still two"]}),
        ],
    )
    suite = load_suite(path)
    assert suite.name == "spec_bench"
    assert suite.source == path
    assert suite.questions == (
        Question("161", "translation", ("Translate: Hallo",)),
        Question("a", "general", ("One", "Two\u2028still two")),
    )
    assert suite.max_new_tokens == 256 and suite.system_prompt is None and suite.note is None


def test_limit_takes_the_first_questions() -> None:
    suite = load_suite("mtbench")
    assert limit(suite, 3).questions == suite.questions[:3]
    assert limit(suite, 1000) == suite
    for bad in (0, -1, True, 2.0):
        with pytest.raises(SuiteError, match="limit"):
            limit(suite, bad)  # type: ignore[arg-type]


def _one_line(err: pytest.ExceptionInfo[SuiteError]) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"question_id": 1, "turns": ["a"]}', '{"question_id": 2, "turns": ['], r":2: malformed JSON"),
        (['{"question_id": 1, "turns": ["a"]}', "", '{"turns": ["a"]}'], r":3: missing key 'question_id'"),
        (['{"question_id": 1}'], r":1: missing key 'turns'"),
        (['{"question_id": 1, "turns": []}'], r":1: 'turns' must be a non-empty list"),
        (['{"question_id": 1, "turns": ["a", "  "]}'], r":1: question '1': turn 2 is empty"),
        (['{"question_id": 1, "turns": [3]}'], r":1: question '1': turn 1 is empty or not a string"),
        (
            ['{"question_id": 1, "turns": ["a"]}', '{"question_id": "1", "turns": ["b"]}'],
            r":2: duplicate question_id '1' \(first on line 1\)",
        ),
        (['{"question_id": 1, "category": 5, "turns": ["a"]}'], r":1: 'category' must be a string"),
        (['{"question_id": null, "turns": ["a"]}'], r":1: 'question_id' must be"),
        (['[1, 2]'], r":1: expected a JSON object"),
        (["", "   "], r"no questions"),
    ],
)
def test_bad_question_file_raises_one_line(tmp_path: Path, lines: list[str], expected: str) -> None:
    path = _write(tmp_path / "q.jsonl", lines)
    with pytest.raises(SuiteError, match=expected) as err:
        load_suite(path)
    assert _one_line(err).startswith(path)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="question file not found") as err:
        load_suite(str(tmp_path / "absent.jsonl"))
    _one_line(err)
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SuiteError, match="cannot read question file") as err:
        load_suite(str(tmp_path / "bin.jsonl"))
    _one_line(err)
    with pytest.raises(SuiteError, match=r"not a \.jsonl question file"):
        load_suite(str(tmp_path / "questions.csv"))


def test_unknown_suite_lists_the_valid_names() -> None:
    with pytest.raises(SuiteError, match="unknown suite 'mt-bench'") as err:
        load_suite("mt-bench")
    assert all(name in _one_line(err) for name in SHIPPED)


# --- suite definitions -----------------------------------------------------------------------

GOOD_TOML = """\
name = "mini"
description = "two questions"
file = "data/q.jsonl"
format = "fastchat"
max_new_tokens = 64
"""


ROWS = [(10, "x"), (9, "x"), (3, "y")]


@pytest.fixture
def user_suites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "data").mkdir()
    _write(
        tmp_path / "data" / "q.jsonl",
        [json.dumps({"question_id": i, "category": c, "turns": [f"q{i}"]}) for i, c in ROWS],
    )
    monkeypatch.setenv(SUITES_ENV, str(tmp_path))
    return tmp_path


def test_env_overrides_suites_dir_and_optional_keys_load(user_suites: Path) -> None:
    (user_suites / "mini.toml").write_text(GOOD_TOML + 'system_prompt = "Be brief."\nnote = "n"\n')
    assert suites_dir() == user_suites
    assert suite_names() == ["mini"]
    suite = load_suite("mini")
    assert (suite.max_new_tokens, suite.system_prompt, suite.note) == (64, "Be brief.", "n")
    assert suite.source == str((user_suites / "data" / "q.jsonl").resolve())
    assert [q.question_id for q in suite.questions] == ["10", "9", "3"]


def test_split_sorts_ids_numerically_within_category(user_suites: Path) -> None:
    (user_suites / "mini.toml").write_text(GOOD_TOML + 'split = "dev"\n')
    # Category x sorted numerically is [9, 10]: 9 → dev; y has only 3 → dev. File order kept.
    assert [q.question_id for q in load_suite("mini").questions] == ["9", "3"]
    (user_suites / "mini.toml").write_text(GOOD_TOML + 'split = "test"\n')
    assert [q.question_id for q in load_suite("mini").questions] == ["10"]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (GOOD_TOML + "temperature = 0\n", r"unknown key 'temperature'"),
        (GOOD_TOML.replace('format = "fastchat"\n', ""), r"missing key 'format'"),
        (GOOD_TOML.replace('"fastchat"', '"alpaca"'), r"unknown format 'alpaca'"),
        (GOOD_TOML + 'split = "train"\n', r"unknown split 'train'"),
        (GOOD_TOML.replace("64", "0"), r"'max_new_tokens' must be a positive integer"),
        (GOOD_TOML.replace("64", '"64"'), r"'max_new_tokens' must be a positive integer"),
        (GOOD_TOML.replace('name = "mini"', 'name = "other"'), r"must match the file name 'mini'"),
        (GOOD_TOML + "note = 3\n", r"'note' must be a string"),
        (GOOD_TOML.replace("data/q.jsonl", "../outside.jsonl"), r"must be a relative path inside"),
        (GOOD_TOML.replace("data/q.jsonl", "data/none.jsonl"), r"question file not found"),
        (GOOD_TOML + "name = \n", r"invalid TOML"),
    ],
)
def test_bad_definition_raises_one_line(user_suites: Path, toml: str, expected: str) -> None:
    (user_suites / "mini.toml").write_text(toml)
    with pytest.raises(SuiteError, match=expected) as err:
        load_suite("mini")
    _one_line(err)


def test_missing_suites_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SUITES_ENV, str(tmp_path / "nope"))
    with pytest.raises(SuiteError, match="suites folder not found"):
        suite_names()
    with pytest.raises(SuiteError, match="suites folder not found"):
        load_suite("mtbench")
