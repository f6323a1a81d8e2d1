"""Qwen2 / Qwen2.5 targets (q/k/v biases, the other family users bring): a tiny random Qwen2 decodes
like transformers' generate and losslessly with every drafter kind that needs no checkpoint (float64)."""

import pytest
import torch

from coral_bench.core.decode import generate
from coral_bench.core.drafter import DrafterSettings, generator_for
from coral_bench.core.sampling import SamplingConfig
from coral_bench.core.target import Target
from coral_bench.core.tree import TreeShape
from coral_bench.drafters.registry import DRAFTERS, build_drafter
from coral_bench.run.chat import render
from coral_bench.run.tiny import tiny_qwen2_model
from test_decode import PROMPTS, _run


@pytest.fixture(scope="module")
def qwen2():
    model = tiny_qwen2_model(seed=0, dtype=torch.float64)
    assert model.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0  # the biases take part
    return model, Target(model, (2,), name="tiny-qwen2")


@pytest.fixture(params=PROMPTS)
def prompt_ids(request, tokenizer):
    return render(tokenizer, [request.param], [], None)


def test_qwen2_vanilla_equals_hf_generate(qwen2, clock, prompt_ids):
    model, target = qwen2
    van = _run(target, clock, "vanilla", prompt_ids, max_new=30)
    hf = model.generate(torch.tensor([prompt_ids]), max_new_tokens=30, do_sample=False)
    assert list(van.ids) == hf[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("name", sorted(n for n, e in DRAFTERS.items() if not e.needs_checkpoint))
@pytest.mark.parametrize("tree", ["chain:3", "top_k=3,depth=2,total_tokens=8"])
def test_qwen2_greedy_output_equals_vanilla(qwen2, clock, prompt_ids, name, tree):
    _, target = qwen2
    van = _run(target, clock, "vanilla", prompt_ids)
    spec = _run(target, clock, name, prompt_ids, tree=TreeShape.parse(tree), reference=van.ids)
    assert spec.ids == van.ids and spec.stop_reason == van.stop_reason


def test_qwen2_full_depth_early_exit_accepts_several_tokens(qwen2, clock, prompt_ids):
    _, target = qwen2
    van = _run(target, clock, "vanilla", prompt_ids)
    settings = DrafterSettings("early-exit", TreeShape.parse("top_k=3,depth=2,total_tokens=8"),
                               checkpoint=str(target.num_layers))
    spec = generate(target, build_drafter(target, settings), prompt_ids, 40, SamplingConfig(), generator_for(0),
                    clock, reserve=settings.tree.max_nodes)
    accepted = [c.accepted for c in spec.cycles]
    assert sum(accepted) / len(accepted) > 1.5 and spec.ids == van.ids
