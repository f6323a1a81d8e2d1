"""Greedy equality with vanilla, judged on the prompt each output answered (docs/methods.md §4).

The noise bounds are measured once per tree shape before any method runs (``noise.json`` in the run
directory, reused on ``--resume``). After the run each (question, turn) of a method is compared with
vanilla greedy decoding of *its own* prompt: the run's vanilla sample when the prompts are equal,
otherwise (an earlier turn diverged, so the method answered its own history) vanilla re-run on that
prompt, untimed. At the first divergence, vanilla's top-2 margin is measured with one prefill.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import torch

from coral_bench.core.records import SampleRecord
from coral_bench.metrics.equality import OWN_HISTORY, SAME_PROMPT, Comparison, Equality, classify, first_divergence
from coral_bench.rundir.layout import VANILLA, write_json
from coral_bench.run.chat import answer_text, turn_prompt
from coral_bench.run.noise import CALIBRATION_PROMPTS, NoiseBound, NoiseShape, measure_noise_bounds
from coral_bench.run.suites import Question, Suite
from coral_bench.run.targets import LoadedTarget

NOISE = "noise.json"  # the measured noise bounds of a run, by shape key

Samples = Mapping[tuple[str, str, int], SampleRecord]  # (method, question_id, turn) → record


def history_prompt(label: str, question: Question, turn: int, loaded: LoadedTarget, suite: Suite,
                   samples: Samples) -> list[int] | None:
    """The prompt ``label`` answered at ``turn``: the question's turns with its own earlier answers
    (None while an earlier answer is missing)."""
    answers = []
    for t in range(turn):
        rec = samples.get((label, question.question_id, t))
        if rec is None:
            return None
        answers.append(answer_text(rec))
    return turn_prompt(loaded.tokenizer, suite, question, turn, answers)


def noise_bounds(shapes: Mapping[str, NoiseShape], loaded: LoadedTarget, suite: Suite,
                 out: Path) -> dict[str, NoiseBound]:
    """The bound of each method's shape (``shapes``: label → shape), by shape key; measured shapes are
    read back from ``out/noise.json``, the others measured on the suite's first turn-0 prompts."""
    path = out / NOISE
    recorded = json.loads(path.read_text())["shapes"] if path.exists() else {}
    bounds = {key: NoiseBound.from_json(data) for key, data in recorded.items()}
    prompts = [turn_prompt(loaded.tokenizer, suite, q, 0, []) for q in suite.questions[:CALIBRATION_PROMPTS]]
    missing = sorted({s for s in shapes.values() if s.key not in bounds}, key=lambda s: s.key)
    if missing:
        bounds |= measure_noise_bounds(loaded.target, prompts, missing)
        write_json(path, {"shapes": {k: b.to_json() for k, b in sorted(bounds.items())}})
    return bounds


def judge(label: str, samples: Samples, loaded: LoadedTarget, suite: Suite, bound: NoiseBound | None,
          rerun_vanilla: Callable[[list[int]], tuple[int, ...]]) -> Equality:
    """Classify every (question, turn) that ``label`` and vanilla both finished (module docstring).

    ``rerun_vanilla(prompt)`` decodes vanilla greedily on a prompt the run's vanilla never saw."""
    questions = {q.question_id: q for q in suite.questions}
    comparisons, identical_to_run = [], 0
    for (method, qid, turn), rec in sorted(samples.items()):
        van = samples.get((VANILLA, qid, turn))
        if method != label or van is None:
            continue
        identical_to_run += rec.output_ids == van.output_ids
        question = questions[qid]
        prompt = history_prompt(label, question, turn, loaded, suite, samples)
        if prompt == history_prompt(VANILLA, question, turn, loaded, suite, samples):
            context, reference = SAME_PROMPT, tuple(van.output_ids)
        else:
            context, reference = OWN_HISTORY, tuple(rerun_vanilla(prompt))
        pos = first_divergence(reference, rec.output_ids)
        margin = None if pos is None or pos >= len(reference) else _margin(loaded, prompt, reference[:pos])
        comparisons.append(Comparison(qid, turn, context, pos, margin, None if bound is None else bound.value))
    return classify(comparisons, identical_to_run, None if bound is None else bound.to_json())


@torch.inference_mode()
def _margin(loaded: LoadedTarget, prompt: list[int], prefix: tuple[int, ...]) -> float:
    """Vanilla's top-2 logit margin after ``prompt + prefix`` (one prefill)."""
    top2 = loaded.target.prefill(torch.tensor([*prompt, *prefix])).logits[0].topk(2).values
    return float(top2[0] - top2[1])
