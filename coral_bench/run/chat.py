"""Rendering conversations with the target's chat template (multi-turn suites re-render each turn)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def render(tokenizer: PreTrainedTokenizerBase, turns: list[str], answers: list[str], system_prompt: str | None) -> list[int]:
    """Token ids of the conversation ``user turns[0], assistant answers[0], …, user turns[-1]`` plus
    the generation prompt. ``len(answers) == len(turns) - 1``. ``system_prompt=None`` keeps the
    template's own default system prompt.

    The text is rendered first and tokenised with ``add_special_tokens=False``: the template already
    writes BOS, so a tokenizer that adds one would double it (DESIGN.md §3).
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


def template_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    import hashlib

    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16]
