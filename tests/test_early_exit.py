"""The early-exit drafter: lossless, exact with all layers, the target's first N layers otherwise (float64)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, LlamaModel

from coral_bench.run.chat import render
from coral_bench.core.decode import generate
from coral_bench.core.drafter import DrafterError, DrafterSettings, generator_for
from coral_bench.drafters.early_exit import default_layers
from coral_bench.drafters.registry import DRAFTERS, build_drafter
from coral_bench.core.sampling import SamplingConfig
from coral_bench.core.target import Target, TargetError
from coral_bench.run.tiny import tiny_config, tiny_model
from coral_bench.core.tree import DraftTree, TreeShape

GREEDY = SamplingConfig()
PROMPTS = ["Tell me a story about a cat.", "abc abc abc abc"]
TREES = ["chain:3", "chain:5", "top_k=3,depth=2,total_tokens=8"]


def _run(target, clock, prompt_ids, name="early-exit", layers=None, tree="chain:3", max_new=40,
         sampling=GREEDY, seed=0):
    settings = DrafterSettings(name=name, tree=TreeShape.parse(tree), checkpoint=layers)
    drafter = build_drafter(target, settings)
    return generate(target, drafter, prompt_ids, max_new, sampling, generator_for(seed), clock,
                    reserve=settings.tree.max_nodes)


@pytest.fixture(params=PROMPTS)
def prompt_ids(request, tokenizer):
    return render(tokenizer, [request.param], [], None)


@pytest.fixture(scope="module")
def model64_3():
    return tiny_model(seed=1, dtype=torch.float64, num_hidden_layers=3)


@pytest.mark.parametrize("layers", ["1", "2"])
@pytest.mark.parametrize("tree", TREES)
def test_greedy_output_equals_vanilla(target64, clock, prompt_ids, layers, tree):
    van = _run(target64, clock, prompt_ids, name="vanilla", tree="chain:1")
    spec = _run(target64, clock, prompt_ids, layers=layers, tree=tree)
    assert spec.ids == van.ids and spec.stop_reason == van.stop_reason
    assert sum(c.emitted for c in spec.cycles) + 1 == len(spec.ids)
    assert all(c.forwards == TreeShape.parse(tree).levels for c in spec.cycles)  # D = levels drafted


@pytest.mark.parametrize("tree", TREES)
def test_all_layers_accept_everything(model64_3, clock, tokenizer, tree):
    """N = all layers drafts the target's own greedy continuation: τ = levels + 1 except the last cycle."""
    target = Target(model64_3, (2,))
    levels = TreeShape.parse(tree).levels
    for text in PROMPTS:
        ids = render(tokenizer, [text], [], None)
        van = _run(target, clock, ids, name="vanilla", tree="chain:1", max_new=41)
        spec = _run(target, clock, ids, layers="3", tree=tree, max_new=41)
        assert spec.ids == van.ids
        assert all(c.accepted == levels and c.emitted == levels + 1 for c in spec.cycles[:-1])
        assert spec.cycles[-1].accepted == levels  # only the cut at max_new_tokens shortens it
        assert len(spec.cycles) == -(-40 // (levels + 1))


def test_draft_is_the_truncated_model_and_leaves_the_cache_as_it_was(model64_3, tokenizer):
    """early_exit_chain = greedy decoding of a model holding only the first N layers (same weights)."""
    target = Target(model64_3, (2,))
    ids = render(tokenizer, [PROMPTS[0]], [], None)
    target.prefill(torch.tensor(ids[:-1]))
    for layers in (1, 2):
        truncated = LlamaForCausalLM(tiny_config(num_hidden_layers=layers)).to(torch.float64).eval()
        truncated.load_state_dict(model64_3.state_dict(), strict=False)  # layers ≥ N are unexpected keys
        before = [(l.keys.clone(), l.values.clone()) for l in target._cache.layers]
        draft = target.early_exit_chain(ids[-1], layers, 6)
        after = [(l.keys, l.values) for l in target._cache.layers]
        assert all(torch.equal(k0, k1) and torch.equal(v0, v1) for (k0, v0), (k1, v1) in zip(before, after))
        seq, rows = list(ids), []
        with torch.no_grad():
            for _ in range(6):  # brute force: full forwards of the truncated model, no cache
                rows.append(truncated(torch.tensor([seq])).logits[0, -1])
                seq.append(int(rows[-1].argmax()))
        assert list(draft.tokens) == seq[len(ids):]
        assert torch.allclose(draft.logits, torch.stack(rows), atol=1e-9)


def test_a_failing_draft_forward_restores_the_cache(model64_3, tokenizer, monkeypatch):
    target = Target(model64_3, (2,))
    ids = render(tokenizer, [PROMPTS[1]], [], None)
    target.prefill(torch.tensor(ids))
    length = target.cache_len
    layer = model64_3.model.layers[1]

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(layer, "forward", broken)  # layer 0 has appended its entry, layer 1 raises
    with pytest.raises(RuntimeError, match="boom"):
        target.early_exit_chain(5, 3, 2)
    monkeypatch.undo()
    assert [l.get_seq_length() for l in target._cache.layers] == [length] * 3
    target.score(DraftTree.root_only(5))  # the target goes on from a consistent cache


def test_sampling_runs_through_the_rejection_verifier(target64, clock, tokenizer):
    """At T > 0 the deterministic draft (point masses) goes through the rejection verifier and stops correctly."""
    ids = render(tokenizer, [PROMPTS[0]], [], None)
    sampling = SamplingConfig(temperature=0.8, top_p=0.9, seed=1)
    for tree in TREES:
        gen = _run(target64, clock, ids, layers="1", tree=tree, sampling=sampling, max_new=30, seed=3)
        assert len(gen.ids) == 30 or gen.stop_reason == "eos"
        assert all(c.expected_accepted is not None for c in gen.cycles)


def test_layer_count_is_parsed_and_checked(target64):
    chain = TreeShape.parse("chain:3")
    assert DRAFTERS["early-exit"].default_tree == chain and not DRAFTERS["early-exit"].needs_checkpoint
    assert build_drafter(target64, DrafterSettings("early-exit", chain)).layers == default_layers(2) == 1
    assert default_layers(32) == 8 and default_layers(30) == 7
    assert build_drafter(target64, DrafterSettings("early-exit", chain, checkpoint="2")).layers == 2
    for bad, message in (("3", "between 1 and"), ("0", "between 1 and"), ("ckpt/dir", "layer count")):
        with pytest.raises(DrafterError, match=message):
            build_drafter(target64, DrafterSettings("early-exit", chain, checkpoint=bad))
    assert build_drafter(target64, DrafterSettings("early-exit", chain)).parameter_count() == 0


def test_the_target_refuses_early_exit_in_the_wrong_state(target64):
    with pytest.raises(TargetError, match="before prefill"):
        Target(target64.model, (2,)).early_exit_chain(5, 1, 2)
    target64.prefill(torch.tensor([1, 5, 9]))
    target64.score(DraftTree.chain(5, [6]))
    with pytest.raises(TargetError, match="between score"):
        target64.early_exit_chain(5, 1, 2)


class _ScaledLlamaModel(LlamaModel):
    """A family whose forward does more than embed → layers → norm (here: scales the embedding)."""

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):
        return super().forward(inputs_embeds=self.embed_tokens(input_ids) * 3.0, **kwargs)


def test_model_families_with_another_forward_are_refused():
    model = tiny_model(seed=0, dtype=torch.float64)
    scaled = _ScaledLlamaModel(model.config).to(torch.float64).eval()
    scaled.load_state_dict(model.model.state_dict())
    model.model = scaled
    with pytest.raises(DrafterError, match="relative error"):
        build_drafter(Target(model, (2,)), DrafterSettings("early-exit", TreeShape.parse("chain:3")))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_embd=32, n_layer=2, n_head=2, n_positions=128)).eval()
    with pytest.raises(DrafterError, match="Llama-style"):
        build_drafter(Target(gpt2, (2,)), DrafterSettings("early-exit", TreeShape.parse("chain:3")))
