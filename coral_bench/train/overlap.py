"""Decontamination: drop training prompts that share a 13-gram with any evaluation question.

Text is normalised (lowercase; every run of non-alphanumeric characters becomes one space) and cut
into words; a training prompt overlaps when any word 13-gram of its user text is a 13-gram of some
evaluation turn (the GPT-3 / Llama contamination convention). Evaluation turns shorter than 13 words
cannot share a 13-gram, so a turn of ``min_words``…12 words (many MT-bench second turns, most alpaca
instructions) counts as one n-gram of its own length: a training prompt containing it verbatim
(after normalisation) overlaps too. Turns under ``min_words`` words are too generic to match on.
Pure Python: no torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .prompts import Prompt

NGRAM = 13
MIN_WORDS = 8
_NON_ALNUM = re.compile(r"[\W_]+")  # unicode-aware: letters and digits of any script are kept


def words(text: str) -> list[str]:
    return _NON_ALNUM.sub(" ", text.lower()).split()


def _grams(tokens: list[str], n: int) -> Iterable[tuple[str, ...]]:
    return zip(*(tokens[i:] for i in range(n)))


@dataclass(frozen=True)
class OverlapIndex:
    """The n-grams of a set of evaluation texts, for contamination checks."""

    grams: dict[int, frozenset[tuple[str, ...]]]  # n-gram length -> grams (NGRAM, plus the short turns' lengths)
    texts: int  # evaluation texts indexed
    suites: tuple[str, ...]  # their suites, for the manifest
    n: int = NGRAM
    min_words: int = MIN_WORDS

    @classmethod
    def from_texts(cls, texts: Iterable[str], suites: tuple[str, ...] = (), n: int = NGRAM,
                   min_words: int = MIN_WORDS) -> OverlapIndex:
        grams: dict[int, set[tuple[str, ...]]] = {}
        count = 0
        for text in texts:
            count += 1
            tokens = words(text)
            if len(tokens) >= n:
                grams.setdefault(n, set()).update(_grams(tokens, n))
            elif len(tokens) >= min_words:
                grams.setdefault(len(tokens), set()).add(tuple(tokens))
        return cls({k: frozenset(v) for k, v in sorted(grams.items())}, count, suites, n, min_words)

    @classmethod
    def from_suites(cls, names: Iterable[str] | None = None) -> OverlapIndex:
        """Every turn of every question of the shipped suites (mtbench, humaneval-full, gsm8k-full,
        alpaca and their subsets), or of the suites ``names``."""
        from coral_bench.run.suites import load_suite, suite_names

        names = tuple(suite_names() if names is None else names)
        texts = [turn for name in names for q in load_suite(name).questions for turn in q.turns]
        return cls.from_texts(texts, suites=names)

    def match(self, text: str) -> tuple[str, ...] | None:
        """The first evaluation n-gram found in ``text``, or None."""
        tokens = words(text)
        for size, grams in self.grams.items():
            if len(tokens) < size:
                continue
            for gram in _grams(tokens, size):
                if gram in grams:
                    return gram
        return None

    def overlaps(self, prompt: Prompt) -> bool:
        """Whether any user turn of ``prompt`` shares an n-gram with an evaluation question."""
        return any(self.match(turn) is not None for turn in prompt.turns)

    def describe(self) -> dict:
        return {"ngram": self.n, "min_words": self.min_words, "suites": list(self.suites),
                "evaluation_texts": self.texts, "ngrams": sum(len(g) for g in self.grams.values())}
