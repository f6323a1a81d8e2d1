"""EAGLE drafter: layer vs HF Llama, incremental cache vs full recompute, EAGLE-2 tree vs brute force."""

from __future__ import annotations

import dataclasses

import random

import pytest
import torch

from coral_bench.core.drafter import DraftContext, DrafterError, DrafterSettings
from coral_bench.drafters.eagle import Candidates, EagleDrafter, build_eagle, rerank
from coral_bench.drafters.eagle_model import EagleConfig, EagleConfigError, EagleModel, rope_inv_freq
from coral_bench.core.target import Target
from coral_bench.core.tree import DraftTree, TreeShape, Verdict, forwards_for_depth


def settings(tree: str, seed: int = 0) -> DrafterSettings:
    return DrafterSettings(name="eagle2", tree=TreeShape.parse(tree), checkpoint="random", seed=seed)


# ---- the module ------------------------------------------------------------------------------
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


@pytest.mark.parametrize("rope", [None, LLAMA3_ROPE])
def test_layer_equals_hf_llama_layer_without_input_norm(rope):
    """fc + our layer == fc + HF LlamaDecoderLayer with input_layernorm removed (EAGLE's architecture)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    hf_cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=1, vocab_size=100, max_position_embeddings=256, rope_theta=500.0,
                         rope_scaling=None if rope is None else dict(rope), rms_norm_eps=1e-5)
    hf_cfg._attn_implementation = "eager"
    cfg = EagleConfig.from_dict(hf_cfg.to_dict())
    assert cfg.rope_scaling == (None if rope is None else LLAMA3_ROPE)
    model = EagleModel(cfg)
    gen = torch.Generator().manual_seed(1)
    model.init_random(gen)
    with torch.no_grad():
        model.layers[0].post_attention_layernorm.weight.uniform_(0.5, 1.5, generator=gen)
    model = model.double()
    hf = LlamaDecoderLayer(hf_cfg, layer_idx=0).double()
    hf.input_layernorm = torch.nn.Identity()
    missing, unexpected = hf.load_state_dict(
        {k.removeprefix("layers.0."): v for k, v in model.state_dict().items() if k.startswith("layers.0.")},
        strict=False)
    assert not unexpected and not missing
    rotary = LlamaRotaryEmbedding(hf_cfg)
    assert torch.equal(rotary.inv_freq.float(), rope_inv_freq(cfg))

    s = 7
    model.requires_grad_(False)
    emb, feat = torch.randn(2, 1, s, 64, dtype=torch.float64, generator=gen)
    pos = torch.arange(40, 40 + s)[None]  # beyond original_max_position_embeddings / factor: scaling matters
    ours = model(emb, feat, pos).hidden
    x = model.fc(torch.cat((emb, feat), -1))
    causal = torch.full((s, s), torch.finfo(torch.float64).min, dtype=torch.float64).triu(1)[None, None]
    with torch.no_grad():
        theirs = hf(x, attention_mask=causal, position_ids=pos, position_embeddings=rotary(x, pos))
    # HF normalises in float32 even for float64 inputs; we keep float64.
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_explicit_past_and_mask_equal_one_causal_forward():
    """Training's form (explicit earlier keys, additive mask) equals one causal pass over all slots."""
    cfg = EagleConfig.from_dict(dict(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=50))
    model = EagleModel(cfg)
    model.init_random(torch.Generator().manual_seed(0))
    model = model.double()
    emb, feat = torch.randn(2, 2, 9, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pos = torch.arange(9).expand(2, 9)
    full = model(emb, feat, pos)
    head = model(emb[:, :5], feat[:, :5], pos[:, :5])
    add = torch.zeros(4, 9, dtype=torch.float64)
    add.masked_fill_(~torch.ones(4, 9, dtype=torch.bool).tril(5), torch.finfo(torch.float64).min)
    tail = model(emb[:, 5:], feat[:, 5:], pos[:, 5:], past=head.kv, attn_mask=add[None, None])
    tail_default = model(emb[:, 5:], feat[:, 5:], pos[:, 5:], past=head.kv)
    last = model(emb[:, 5:], feat[:, 5:], pos[:, 5:], past=head.kv, attn_mask=add[None, None], last_only=True)
    torch.testing.assert_close(last.hidden, full.hidden[:, -1:], rtol=0, atol=1e-12)
    torch.testing.assert_close(last.kv.keys, tail.kv.keys, rtol=0, atol=0)
    torch.testing.assert_close(tail.hidden, full.hidden[:, 5:], rtol=0, atol=1e-12)
    torch.testing.assert_close(tail_default.hidden, full.hidden[:, 5:], rtol=0, atol=1e-12)
    torch.testing.assert_close(head.kv.cat(tail.kv).keys, full.kv.keys, rtol=0, atol=1e-12)


def test_config_refuses_unsupported_rope_and_activation():
    base = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, vocab_size=50)
    with pytest.raises(EagleConfigError, match="yarn"):
        EagleConfig.from_dict({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(EagleConfigError, match="gelu"):
        EagleConfig.from_dict({**base, "hidden_act": "gelu"})
    assert EagleConfig.from_dict({**base, "model_type": "qwen2"}).qkv_bias
    assert not EagleConfig.from_dict({**base, "bias": False}).fc_bias
    assert EagleConfig.from_dict({**base, "rope_scaling": {"type": "linear", "factor": 2.0}}).rope_scaling == {
        "rope_type": "linear", "factor": 2.0}


# ---- brute-force references ----------------------------------------------------------------
@torch.no_grad()
def full_forward(drafter: EagleDrafter, next_tokens: list[int], feats: torch.Tensor):
    """All slots in one causal pass from scratch (no cache): hidden [n, H] and keys/values."""
    ids = torch.tensor(next_tokens)
    out = drafter.model(drafter.target.embed(ids)[None], feats[None], torch.arange(len(next_tokens))[None])
    return out.hidden[0], out.kv


def target_features(target: Target, seq: list[int]) -> torch.Tensor:  # [len, H] from a fresh forward
    with torch.no_grad():
        return target.model.model(input_ids=torch.tensor([seq])).last_hidden_state[0]


def reference_tree(drafter: EagleDrafter, seq: list[int], feats: torch.Tensor, shape: TreeShape) -> DraftTree:
    """EAGLE-2 by brute force: every node's output from an explicit causal recompute of its own path
    (real slots, then the ancestors self-fed), Python sorting with (−score, candidate index)."""
    k = 1 if shape.kind == "chain" else shape.top_k
    expansions = shape.depth - 1 if shape.kind == "chain" else shape.depth
    real_tokens = seq[1:]

    def out_after(path: list[int]) -> torch.Tensor:  # path = drafted tokens from level 1 down
        tokens, fs = list(real_tokens), feats
        hidden, _ = full_forward(drafter, tokens, fs)
        for tok in path:  # self-feed: slot input (embed(tok), output of the previous slot)
            tokens.append(tok)
            fs = torch.cat((fs, hidden[-1:]))
            hidden, _ = full_forward(drafter, tokens, fs)
        return hidden[-1]

    def children(path):
        lp = torch.log_softmax(drafter.target.logits_from_features(out_after(path)), -1)
        top = lp.topk(k)
        return list(zip(top.indices.tolist(), top.values.tolist()))

    cands = []  # (token, logprob, score, parent candidate index, path)
    for tok, lp in children([]):
        cands.append((tok, lp, lp, -1, [tok]))
    frontier = list(range(len(cands)))
    for i in range(1, expansions + 1):
        new = []
        for f in frontier:
            for tok, lp in children(cands[f][4]):
                new.append(len(cands))
                cands.append((tok, lp, cands[f][2] + lp, f, cands[f][4] + [tok]))
        frontier = sorted(new, key=lambda c: (-cands[c][2], c))[:k]
    keep = len(cands) if shape.kind == "chain" else shape.total_tokens - 1
    chosen = sorted(sorted(range(len(cands)), key=lambda c: (-cands[c][2], c))[:keep])
    node = {c: j + 1 for j, c in enumerate(chosen)}
    return DraftTree(
        tokens=(seq[-1], *(cands[c][0] for c in chosen)),
        parents=(-1, *(node.get(cands[c][3], 0) for c in chosen)),
        forwards=forwards_for_depth(expansions),
        draft_logprobs=(0.0, *(cands[c][1] for c in chosen)),
    )


def assert_same_tree(tree: DraftTree, ref: DraftTree) -> None:
    assert tree.tokens == ref.tokens
    assert tree.parents == ref.parents
    assert tree.forwards == ref.forwards
    torch.testing.assert_close(torch.tensor(tree.draft_logprobs), torch.tensor(ref.draft_logprobs),
                               rtol=0, atol=1e-9)


# ---- the drafter ------------------------------------------------------------------------------
@pytest.mark.parametrize("tree", ["top_k=3,depth=3,total_tokens=10", "top_k=3,depth=3,total_tokens=40", "chain:3"])
def test_incremental_cache_equals_full_recompute(target64, tree):
    """Prefill + cycles with branching accepted paths: the drafter cache, its last output and every
    proposed tree equal a from-scratch recompute fed with fresh target features (docs/methods.md §2)."""
    drafter = build_eagle(target64, settings(tree))
    shape = drafter.settings.tree
    rng = random.Random(0)
    prompt = [1, *rng.choices(range(3, 259), k=9)]
    pre = target64.prefill(torch.tensor(prompt))
    first = int(pre.logits[-1].argmax())
    drafter.begin(DraftContext(prompt_ids=tuple(prompt), first_token=first, prefill=pre))
    seq = [*prompt, first]  # decided tokens, root last
    branched = False
    for cycle in range(6):
        tree = drafter.propose(seq[-1])
        c = len(seq) - 1  # drafter slots 0…c−1 hold x_1…x_c with real features f_0…f_{c−1}
        feats = target_features(target64, seq[:-1])
        hidden, kv = full_forward(drafter, seq[1:], feats)
        cached = drafter.cache.view()
        assert cached.length == c  # tree entries were dropped again
        torch.testing.assert_close(drafter._last_hidden, hidden[-1], rtol=0, atol=1e-9)
        torch.testing.assert_close(cached.keys, kv.keys, rtol=0, atol=1e-9)
        torch.testing.assert_close(cached.values, kv.values, rtol=0, atol=1e-9)
        assert_same_tree(tree, reference_tree(drafter, seq, feats, shape))
        assert tree.size <= shape.max_nodes

        scored = target64.score(tree)
        # Accept an arbitrary path (root only, the last node, a random node) — not only greedy —
        # so branching commits are exercised; the bonus is the target's argmax after it.
        end = [0, tree.size - 1, rng.randrange(tree.size)][cycle % 3]
        path = tree.path_to(end)
        branched |= any(tree.children[tree.parents[n]].index(n) > 0 for n in path[1:])
        bonus = int(scored.logits[path[-1]].argmax())
        verdict = Verdict(path=path, tokens=(*(tree.tokens[n] for n in path[1:]), bonus))
        target64.commit(path)
        drafter.commit(verdict, scored)
        seq += list(verdict.tokens)
    assert shape.kind == "chain" or branched


def test_tree_shape_properties(target64):
    drafter = build_eagle(target64, settings("top_k=4,depth=3,total_tokens=20", seed=3))
    prompt = [1, 50, 60, 70]
    pre = target64.prefill(torch.tensor(prompt))
    drafter.begin(DraftContext(tuple(prompt), 80, pre))
    tree = drafter.propose(80)
    assert tree.size == 20 and tree.forwards == forwards_for_depth(3) == 4
    assert tree.depth <= 4
    assert all(lp <= 0 for lp in tree.draft_logprobs)
    # Connected, parents first: DraftTree checked it; scores never grow down a path.
    scores = [0.0] * tree.size
    for i in range(1, tree.size):
        scores[i] = scores[tree.parents[i]] + tree.draft_logprobs[i]
        assert scores[i] <= scores[tree.parents[i]]


def test_chain_shape_gives_a_greedy_chain(target64):
    drafter = build_eagle(target64, settings("chain:4"))
    prompt = [1, 10, 20, 30, 40]
    pre = target64.prefill(torch.tensor(prompt))
    drafter.begin(DraftContext(tuple(prompt), 99, pre))
    tree = drafter.propose(99)
    assert tree.is_chain and tree.size == 5 and tree.forwards == 4


def test_all_ties_keep_the_tree_connected(target64):
    """A zero-weight drafter gives a uniform distribution: every score at a level ties."""
    drafter = build_eagle(target64, settings("top_k=3,depth=3,total_tokens=10"))
    with torch.no_grad():
        for p in drafter.model.parameters():
            p.zero_()
    prompt = [1, 5, 6]
    pre = target64.prefill(torch.tensor(prompt))
    drafter.begin(DraftContext(tuple(prompt), 7, pre))
    tree = drafter.propose(7)
    # 3 level-1 nodes, then the first 6 level-2 candidates by index: the children of nodes 1 and 2.
    assert tree.size == 10
    assert tree.parents == (-1, 0, 0, 0, 1, 1, 1, 2, 2, 2)


# ---- rerank as a pure function -----------------------------------------------------------------
def brute_rerank(scores: list[float], parents: list[int], keep: int) -> tuple[list[int], list[int]]:
    chosen = sorted(sorted(range(len(scores)), key=lambda c: (-scores[c], c))[:keep])
    node = {c: j + 1 for j, c in enumerate(chosen)}
    return chosen, [0 if parents[c] < 0 else node[parents[c]] for c in chosen]


def random_candidates(rng: random.Random, k: int, expansions: int, tie_every: int = 0) -> Candidates:
    """Candidates laid out as EAGLE-2 stores them; with tie_every, some log-probs are exactly 0 and
    scores are rounded coarsely so parents, children and cousins tie."""
    def lp():
        if tie_every and rng.randrange(tie_every) == 0:
            return 0.0
        return -round(rng.uniform(0, 2), 1 if tie_every else 6)

    scores, parents, logprobs = [], [], []
    frontier = []
    for _ in range(k):
        v = lp()
        frontier.append(len(scores))
        scores.append(v), parents.append(-1), logprobs.append(v)
    for _ in range(expansions):
        new = []
        for f in frontier:
            for _ in range(k):
                v = lp()
                new.append(len(scores))
                scores.append(scores[f] + v), parents.append(f), logprobs.append(v)
        frontier = sorted(new, key=lambda c: (-scores[c], c))[:k]
    n = len(scores)
    return Candidates(tokens=torch.arange(n), logprobs=torch.tensor(logprobs),
                      scores=torch.tensor(scores, dtype=torch.float32), parents=torch.tensor(parents))


@pytest.mark.parametrize("tie_every", [0, 3])
def test_rerank_equals_brute_force(tie_every):
    rng = random.Random(tie_every)
    for trial in range(50):
        k, e = rng.randint(1, 4), rng.randint(1, 3)
        cand = random_candidates(rng, k, e, tie_every)
        keep = rng.randint(1, cand.scores.shape[0] + 2)
        chosen, node_parents = rerank(cand, keep)
        ref_chosen, ref_parents = brute_rerank(cand.scores.tolist(), cand.parents.tolist(), keep)
        assert chosen.tolist() == ref_chosen
        assert node_parents.tolist() == ref_parents
        DraftTree(tokens=(10_000, *chosen.tolist()), parents=(-1, *node_parents.tolist()))  # valid tree


def test_rerank_tie_between_parent_and_child_keeps_the_parent():
    # candidate 2 (child of 0, log-prob 0) ties its parent; keep 1 must take the parent.
    cand = Candidates(tokens=torch.tensor([5, 6, 7]), logprobs=torch.tensor([-1.0, -2.0, 0.0]),
                      scores=torch.tensor([-1.0, -2.0, -1.0]), parents=torch.tensor([-1, -1, 0]))
    assert rerank(cand, 1)[0].tolist() == [0]
    assert rerank(cand, 2)[0].tolist() == [0, 2]
    disconnected = Candidates(tokens=torch.tensor([5, 6]), logprobs=torch.tensor([-3.0, 0.0]),
                              scores=torch.tensor([-3.0, -1.0]), parents=torch.tensor([-1, 0]))
    with pytest.raises(AssertionError, match="connected"):
        rerank(disconnected, 1)


# ---- protocol misuse -----------------------------------------------------------------------------
def test_protocol_misuse_is_refused(target64):
    drafter = build_eagle(target64, settings("chain:2"))
    with pytest.raises(DrafterError, match="before begin"):
        drafter.propose(5)
    pre = target64.prefill(torch.tensor([1, 2, 3]))
    drafter.begin(DraftContext((1, 2, 3), 9, pre))
    with pytest.raises(DrafterError, match="root"):
        drafter.propose(8)
    tree = drafter.propose(9)
    scored = target64.score(tree)
    verdict = Verdict(path=(0,), tokens=(4,))
    drafter.commit(verdict, scored)
    with pytest.raises(DrafterError, match="twice"):
        drafter.commit(verdict, scored)
    with pytest.raises(DrafterError, match="random"):
        build_eagle(target64, dataclasses.replace(settings("chain:2"), embedding="checkpoint"))


def test_random_weights_are_seeded_and_dtype_independent(target64):
    a = build_eagle(target64, settings("chain:2", seed=1))
    b = build_eagle(target64, settings("chain:2", seed=1))
    c = build_eagle(target64, settings("chain:2", seed=2))
    for (name, pa), pb, pc in zip(a.model.named_parameters(), b.model.parameters(), c.model.parameters()):
        assert torch.equal(pa, pb)
        if name.endswith("weight") and "layernorm" not in name:
            assert not torch.equal(pa, pc)
    assert a.parameter_count() == sum(p.numel() for p in a.model.parameters())
