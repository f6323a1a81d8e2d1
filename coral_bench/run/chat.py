"""Rendering conversations with the target's chat template (multi-turn suites re-render each turn)."""

from __future__ import annotations

from typing import Sequence

from transformers import PreTrainedTokenizerBase

from coral_bench.core.records import SampleRecord
from coral_bench.run.suites import Question, Suite


def render(tokenizer: PreTrainedTokenizerBase, turns: list[str], answers: list[str], system_prompt: str | None) -> list[int]:
    """Token ids of the conversation ``user turns[0], assistant answers[0], …, user turns[-1]`` plus
    the generation prompt. ``len(answers) == len(turns) - 1``. ``system_prompt=None`` keeps the
    template's own default system prompt.

    The text is rendered first and tokenised with ``add_special_tokens=False``: the template already
    writes BOS, so a tokenizer that adds one would double it (docs/design.md §3).
    """
    if len(answers) != len(turns) - 1:
        raise ValueError("a conversation needs one answer per earlier turn")
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    for i, turn in enumerate(turns):
        messages.append({"role": "user", "content": turn})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i]})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def turn_prompt(tokenizer: PreTrainedTokenizerBase, suite: Suite, question: Question, turn: int,
                answers: Sequence[str]) -> list[int]:
    """The prompt of ``question``'s turn ``turn`` (0-based): its turns so far, with ``answers`` (one per
    earlier turn, the answering method's own, as :func:`answer_text`) between them. Every command that
    asks a suite's question renders it here, so runs, replays and tree search see the same tokens."""
    return render(tokenizer, list(question.turns[: turn + 1]), list(answers), suite.system_prompt)


def answer_text(record: SampleRecord) -> str:
    """An earlier turn's answer as the next turn's conversation carries it."""
    return record.output_text.strip()


def template_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    import hashlib

    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16]
