"""Published reference numbers (docs/methods.md §9): GPU, 7–8B targets, not measured by coral-bench.

Kept as data so that the report can show them beside, never mixed with, this machine's numbers.
Compare acceptance (τ) across implementations, not speedups: hardware and engines differ.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    method: str
    target: str
    suite: str
    temperature: str
    speedup: str
    tau: str
    tau_convention: str
    hardware: str
    source: str


_EAGLE = ("pooled", "A100", "EAGLE-2 paper (arXiv 2406.16858)")
_HASS_SECONDARY = ("per question", "H800", "HASS vs EAGLE-2 (secondary source)")

PUBLISHED: tuple[Published, ...] = (
    Published("CORAL", "Llama3-8B, Llama2-7B, Qwen2.5-7B", "MT-bench, HumanEval, GSM8K", "–", "2.50×–4.07×", "–",
              "not stated", "A6000", "CORAL paper (arXiv 2502.16880): range over targets × suites"),
    Published("CORAL", "not stated", "MT-bench", "–", "–", "5.25", "not stated", "A6000", "secondary source"),
    Published("CORAL", "not stated", "GSM8K", "–", "–", "5.39", "not stated", "A6000", "secondary source"),
    Published("EAGLE-2", "LLaMA3-Instruct-8B", "MT-bench", "0", "3.46×", "4.53", *_EAGLE),
    Published("EAGLE-2", "LLaMA2-Chat-7B", "MT-bench", "0", "3.43×", "4.70", *_EAGLE),
    Published("EAGLE-2", "LLaMA2-Chat-7B", "HumanEval", "0", "4.03×", "5.39", *_EAGLE),
    Published("EAGLE-2", "LLaMA2-Chat-7B", "GSM8K", "0", "3.52×", "4.77", *_EAGLE),
    Published("HASS", "LLaMA3-Instruct-8B", "mean of MT-bench, HumanEval, GSM8K", "0", "3.09×", "5.08",
              *_HASS_SECONDARY),
    Published("EAGLE-2 (in HASS's comparison)", "LLaMA3-Instruct-8B", "mean of MT-bench, HumanEval, GSM8K", "0",
              "2.83×", "4.52", *_HASS_SECONDARY),
    Published("HASS", "LLaMA2-Chat-7B", "mean of MT-bench, HumanEval, GSM8K", "0", "3.24×", "5.15", *_HASS_SECONDARY),
    Published("EAGLE-2 (in HASS's comparison)", "LLaMA2-Chat-7B", "mean of MT-bench, HumanEval, GSM8K", "0",
              "2.81×", "4.61", *_HASS_SECONDARY),
)

FR_SPEC_LM_HEAD = "FR-Spec measured 49% (LM head) and 62% (with log-softmax and top-k) for Llama-3-8B's drafter on a GPU"
