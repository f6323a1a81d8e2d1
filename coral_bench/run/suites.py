"""Benchmark suites: definitions in `suites/*.toml` (strict keys) and question-file loading.

A suite definition names a data file under `suites/` and its format; formats other than FastChat
are converted here, at load time, so the shipped data files stay byte-identical to upstream
(suites/SOURCES.md). Pure Python: no torch, no model.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from coral_bench.paths import PACKAGE_DIR

SUITES_ENV = "CORAL_BENCH_SUITES"  # overrides the suites/ folder
DEFAULT_MAX_NEW_TOKENS = 256  # for user question files, which carry no definition
DEFAULT_CATEGORY = "general"  # FastChat files may omit "category" (Spec-Bench style)
# EAGLE/HASS build each HumanEval turn as this + the raw prompt, no separator (docs/methods.md §8).
HUMANEVAL_INSTRUCTION = "Complete the code I provided."
FORMATS = ("fastchat", "humaneval", "gsm8k")
SPLITS = ("dev", "test")
REQUIRED_KEYS = ("name", "description", "file", "format", "max_new_tokens")
OPTIONAL_KEYS = ("split", "note", "system_prompt")


class SuiteError(ValueError):
    """A suite or question file is unknown or malformed; the message is one human-readable line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the parser said


@dataclass(frozen=True)
class Question:
    """One prompt: its turns are sent one after another in the same conversation."""

    question_id: str
    category: str
    turns: tuple[str, ...]  # [n_turns], each non-empty

    def __post_init__(self) -> None:
        if not self.turns:
            raise SuiteError(f"question {self.question_id!r} has no turns")
        for i, turn in enumerate(self.turns, start=1):
            if not isinstance(turn, str) or not turn.strip():
                raise SuiteError(f"question {self.question_id!r}: turn {i} is empty or not a string")


@dataclass(frozen=True)
class Suite:
    """A named, ordered set of questions plus the generation settings that belong to it."""

    name: str
    description: str
    questions: tuple[Question, ...]  # [n_questions], unique ids, file order
    max_new_tokens: int
    system_prompt: str | None  # None: the target's own default system prompt
    note: str | None  # e.g. a license caveat, carried into results
    source: str  # data file, relative to the repo for shipped suites, else the user's path

    def __post_init__(self) -> None:
        if not self.questions:
            raise SuiteError(f"suite {self.name!r} has no questions")
        if not _positive_int(self.max_new_tokens):
            raise SuiteError(f"suite {self.name!r}: max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        seen: set[str] = set()
        for q in self.questions:
            if q.question_id in seen:
                raise SuiteError(f"suite {self.name!r}: duplicate question_id {q.question_id!r}")
            seen.add(q.question_id)


def suites_dir() -> Path:
    """The `suites/` folder: next to the package, or `$CORAL_BENCH_SUITES` when set."""
    override = os.environ.get(SUITES_ENV)
    if override:
        return Path(override).expanduser()
    return PACKAGE_DIR / "suites"


def suite_names() -> list[str]:
    """Names of the shipped suites (one `<name>.toml` each), sorted."""
    folder = suites_dir()
    if not folder.is_dir():
        raise SuiteError(f"suites folder not found: {folder} (set {SUITES_ENV} to override)")
    return sorted(p.stem for p in folder.glob("*.toml"))


def load_suite(name_or_path: str) -> Suite:
    """Load a shipped suite by name, or a FastChat/Spec-Bench `.jsonl` question file by path."""
    if _looks_like_path(name_or_path):
        return _load_user_file(Path(name_or_path), name_or_path)
    definition = suites_dir() / f"{name_or_path}.toml"
    if not definition.is_file():
        names = suite_names()
        valid = ", ".join(names) if names else f"none found in {suites_dir()}"
        raise SuiteError(f"unknown suite {name_or_path!r} (valid: {valid}; or a path to a .jsonl file)")
    return _load_definition(definition)


def limit(suite: Suite, n: int) -> Suite:
    """The same suite with only its first `n` questions (all of them if it has fewer)."""
    if not _positive_int(n):
        raise SuiteError(f"limit must be an integer >= 1, got {n!r}")
    return replace(suite, questions=suite.questions[:n])


def shard_of(suite: Suite, index: int, count: int) -> Suite:
    """Shard ``index`` of ``count`` (0-based): questions index, index + count, … — every shard gets
    questions from the whole suite, so shards take about as long as each other."""
    if not (_positive_int(count) and isinstance(index, int) and 0 <= index < count):
        raise SuiteError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    questions = suite.questions[index::count]
    if not questions:
        raise SuiteError(f"shard {index}/{count} has no questions: the suite has only {len(suite.questions)}")
    return replace(suite, questions=questions)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# --- definitions -----------------------------------------------------------------------------


def _looks_like_path(text: str) -> bool:
    # Suite names are bare words ("humaneval-full"); anything with a folder or a suffix is a file.
    return os.sep in text or "/" in text or Path(text).suffix != ""


def _load_definition(path: Path) -> Suite:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise SuiteError(f"cannot read suite definition {path}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{path}: invalid TOML: {e}") from e

    unknown = sorted(set(raw) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        valid = ", ".join(REQUIRED_KEYS + OPTIONAL_KEYS)
        raise SuiteError(f"{path}: unknown key {unknown[0]!r} (valid keys: {valid})")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise SuiteError(f"{path}: missing key {key!r}")
    for key in ("name", "description", "file", "format", *OPTIONAL_KEYS):
        if key in raw and not isinstance(raw[key], str):
            raise SuiteError(f"{path}: {key!r} must be a string, got {raw[key]!r}")
    max_new = raw["max_new_tokens"]
    if not _positive_int(max_new):
        raise SuiteError(f"{path}: 'max_new_tokens' must be a positive integer, got {max_new!r}")
    if raw["name"] != path.stem:
        # The file name is how users ask for a suite; a different inner name would be a second identity.
        raise SuiteError(f"{path}: name {raw['name']!r} must match the file name {path.stem!r}")
    if raw["format"] not in FORMATS:
        raise SuiteError(f"{path}: unknown format {raw['format']!r} (valid: {', '.join(FORMATS)})")
    split = raw.get("split")
    if split is not None and split not in SPLITS:
        raise SuiteError(f"{path}: unknown split {split!r} (valid: {', '.join(SPLITS)})")

    root = path.parent.resolve()
    data = (root / raw["file"]).resolve()
    if Path(raw["file"]).is_absolute() or not data.is_relative_to(root):
        # Runs must depend only on data shipped (and hashed) in the repository.
        raise SuiteError(f"{path}: file {raw['file']!r} must be a relative path inside {root}")
    try:
        source = data.relative_to(PACKAGE_DIR).as_posix()
    except ValueError:  # an overridden suites folder outside the repo
        source = str(data)

    questions = _read_questions(data, source, raw["format"])
    if split is not None:
        questions = _half(questions, split)
    return Suite(
        name=raw["name"],
        description=raw["description"],
        questions=questions,
        max_new_tokens=max_new,
        system_prompt=raw.get("system_prompt"),
        note=raw.get("note"),
        source=source,
    )


def _load_user_file(path: Path, given: str) -> Suite:
    if path.suffix != ".jsonl":
        raise SuiteError(f"not a .jsonl question file: {given}")
    # FastChat names every file question.jsonl, so its folder (e.g. spec_bench) is the informative part.
    name = path.parent.name if path.stem == "question" and path.parent.name else path.stem
    return Suite(
        name=name,
        description=f"questions from {given}",
        questions=_read_questions(path, given, "fastchat"),
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
        system_prompt=None,
        note=None,
        source=given,
    )


def _half(questions: tuple[Question, ...], split: str) -> tuple[Question, ...]:
    """Fixed dev/test halves: within each category, by id, even positions → dev, odd → test."""
    by_category: dict[str, list[Question]] = {}
    for q in questions:
        by_category.setdefault(q.category, []).append(q)
    parity = SPLITS.index(split)
    chosen = {
        q.question_id
        for group in by_category.values()
        for i, q in enumerate(sorted(group, key=_id_order))
        if i % 2 == parity
    }
    return tuple(q for q in questions if q.question_id in chosen)


def _id_order(q: Question) -> tuple[int, int, str]:
    # Numeric ids sort as numbers (9 before 10); mixed ids still get a total order.
    qid = q.question_id
    return (0, int(qid), "") if qid.isdigit() else (1, 0, qid)


# --- question files --------------------------------------------------------------------------


def _read_questions(path: Path, source: str, fmt: str) -> tuple[Question, ...]:
    convert = _CONVERTERS[fmt]
    questions: list[Question] = []
    first_line: dict[str, int] = {}
    for row, (lineno, record) in enumerate(_jsonl_records(path, source)):
        where = f"{source}:{lineno}"
        try:
            q = convert(record, row)
        except SuiteError as e:
            raise SuiteError(f"{where}: {e}") from e
        if q.question_id in first_line:
            first = first_line[q.question_id]
            raise SuiteError(f"{where}: duplicate question_id {q.question_id!r} (first on line {first})")
        first_line[q.question_id] = lineno
        questions.append(q)
    if not questions:
        raise SuiteError(f"{source}: no questions in file")
    return tuple(questions)


def _jsonl_records(path: Path, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except FileNotFoundError as e:
        raise SuiteError(f"question file not found: {source}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise SuiteError(f"cannot read question file {source}: {e}") from e
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028/U+0085, which are not line ends.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SuiteError(f"{source}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(record, dict):
            raise SuiteError(f"{source}:{lineno}: expected a JSON object, got {type(record).__name__}")
        yield lineno, record


def _require(record: dict[str, Any], key: str) -> Any:
    if key not in record:
        raise SuiteError(f"missing key {key!r}")
    return record[key]


def _string(record: dict[str, Any], key: str) -> str:
    value = _require(record, key)
    if not isinstance(value, str):
        raise SuiteError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _from_fastchat(record: dict[str, Any], row: int) -> Question:
    qid = _require(record, "question_id")
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or qid == "":
        raise SuiteError(f"'question_id' must be an integer or a non-empty string, got {qid!r}")
    turns = _require(record, "turns")
    if not isinstance(turns, list) or not turns:
        raise SuiteError(f"'turns' must be a non-empty list of strings, got {turns!r}")
    category = record.get("category", DEFAULT_CATEGORY)
    if not isinstance(category, str):
        raise SuiteError(f"'category' must be a string, got {category!r}")
    return Question(question_id=str(qid), category=category, turns=tuple(turns))


def _from_humaneval(record: dict[str, Any], row: int) -> Question:
    # Same string as the EAGLE subset's turns, so both suites give the target identical prompts.
    turn = HUMANEVAL_INSTRUCTION + _string(record, "prompt")
    return Question(question_id=_string(record, "task_id"), category="code", turns=(turn,))


def _from_gsm8k(record: dict[str, Any], row: int) -> Question:
    # The raw question, as in the EAGLE subset; the id is the 0-based row in test.jsonl.
    return Question(question_id=str(row), category="math", turns=(_string(record, "question"),))


_CONVERTERS: dict[str, Callable[[dict[str, Any], int], Question]] = {
    "fastchat": _from_fastchat,
    "humaneval": _from_humaneval,
    "gsm8k": _from_gsm8k,
}
